"""Foundation: the CLI, configs, tiny models and the thinking switch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from onereason import thinking
from onereason.cli import COMMANDS
from onereason.configs import parse_config

ITEMIC = ["<s_a_1>", "<s_b_2>", "<s_c_3>"]


def test_cli_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "onereason.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "onereason.cli", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command):
    proc = subprocess.run(
        [sys.executable, "-m", "onereason.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--" in proc.stdout and "usage" in proc.stdout.lower()


@dataclass
class _Demo:
    lr: float = field(default=0.1, metadata={"help": "learning rate"})
    name: str = field(default="x", metadata={"help": "a name"})


def test_config_yaml_overrides_and_unknown_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.5\nname: from-yaml\n")
    (demo,) = parse_config([_Demo], ["--config", str(cfg), "--name", "cli"])
    assert demo.lr == 0.5 and demo.name == "cli"
    cfg.write_text("lr: 0.5\nlearning_rat: 3\n")
    with pytest.raises(SystemExit, match="learning_rat"):
        parse_config([_Demo], ["--config", str(cfg)])


def test_tiny_model_tokens_template_and_reload(make_tiny_model):
    path = make_tiny_model(ITEMIC)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert 0.1e6 < sum(p.numel() for p in model.parameters()) < 1e6
    # <think>, </think> and itemic tokens are single tokens that survive decode -> encode.
    for token in ["<think>", "</think>", "<|sid_begin|>", "<|sid_end|>", *ITEMIC]:
        ids = tok(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
        assert tok(tok.decode(ids), add_special_tokens=False).input_ids == ids
    answer = thinking.format_answer("<|sid_begin|>" + "".join(ITEMIC) + "<|sid_end|>", "Derivation: a.")
    ids = tok(answer, add_special_tokens=False).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == answer
    # Both thinking modes render with Qwen3's conventions.
    chat = [{"role": "user", "content": thinking.with_switch("history", "think")}]
    think_prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    no_think = tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert think_prompt.endswith("<|im_start|>assistant\n") and "/think" in think_prompt
    assert no_think.endswith("<|im_start|>assistant\n" + thinking.EMPTY_THINK)
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=False)
    assert "<think>\nDerivation: a.\n</think>\n\n<|sid_begin|>" in full
    # The saved folder reloads identically.
    tok.save_pretrained(path / "again")
    model.save_pretrained(path / "again")
    tok2 = AutoTokenizer.from_pretrained(path / "again")
    model2 = AutoModelForCausalLM.from_pretrained(path / "again")
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_init_model_command(tmp_path, capsys):
    from onereason.cli import main

    assert main(["init-model", "--output_dir", str(tmp_path / "m"), "--preset", "tiny"]) == 0
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer_config.json").exists()
    capsys.readouterr()
    # A bad preset is a config error: one line, exit code 2, nothing written.
    assert main(["init-model", "--output_dir", str(tmp_path / "x"), "--preset", "huge"]) == 2
    assert "unknown size preset 'huge'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()


def test_thinking_switch_and_split():
    assert thinking.with_switch("hi /no_think", "think") == "hi /think"
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "h /think"}]
    assert thinking.switch_mode(msgs, "no_think")[-1]["content"] == "h /no_think"
    assert msgs[-1]["content"] == "h /think"  # the input is not modified
    assert thinking.split_answer("<think>\nabc\n</think>\n\nX") == ("abc", "X")
    assert thinking.split_answer(thinking.EMPTY_THINK + "X") == ("", "X")
    assert thinking.split_answer("no block") == (None, "no block")
