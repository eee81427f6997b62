"""Data builders: sources -> canonical logs -> splits -> identifiers -> task datasets."""
