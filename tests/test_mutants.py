"""Each broken version of issue 21's table must make a test fail (CPU, about a second in all).

A broken version is the project's function with one edit to its source (the table below: what is replaced by
what), put in place with monkeypatch; the check is the body of an oracle test of tests/test_oracles.py, which must
then raise AssertionError. When a function is rewritten and an edit no longer applies, the test says so: write the
broken version anew for the new code, and keep the table true.

    python -m pytest -q tests/test_mutants.py
"""

import inspect
import textwrap

import pytest

import data
import finetune
import pretrain
import test_oracles

LOSS_LINE = '"loss": mlm_loss_sum / mlm_normaliser + itm_loss_sum / itm_normaliser,'

# (function's module, function name, broken version, [(text, replaced by)], the check that must fail)
MUTANTS = [
    (pretrain, "losses_from_logits", "the ITM term subtracted instead of added",
     [(LOSS_LINE, LOSS_LINE.replace("+ itm_loss_sum", "- itm_loss_sum"))], test_oracles.check_losses_from_logits),
    (pretrain, "losses_from_logits", "the ITM term weighted 0.5",
     [(LOSS_LINE, LOSS_LINE.replace("+ itm_loss_sum", "+ 0.5 * itm_loss_sum"))], test_oracles.check_losses_from_logits),
    (pretrain, "losses_from_logits", "the ITM term divided by the MLM count",
     [(LOSS_LINE, LOSS_LINE.replace("itm_loss_sum / itm_normaliser", "itm_loss_sum / max(mlm_count, 1.0)"))],
     test_oracles.check_losses_from_logits),
    (pretrain, "losses_from_logits", "the MLM accuracy inverted",
     [("(mlm_logits.argmax(-1) == mlm_targets)", "(mlm_logits.argmax(-1) != mlm_targets)")],
     test_oracles.check_losses_from_logits),
    (pretrain, "losses_from_logits", "+1 on every MLM normaliser",
     [("mlm_normaliser = max(mlm_count, 1.0) if mlm_normaliser is None else mlm_normaliser",
       "mlm_normaliser = (max(mlm_count, 1.0) if mlm_normaliser is None else mlm_normaliser) + 1")],
     test_oracles.check_losses_from_logits),
    (data, "mask_tokens", "a random replacement may be a special id",
     [("random_ids = tokenizer.normal_ids[", "random_ids = torch.arange(tokenizer.vocab_size)["),
      ("torch.randint(len(tokenizer.normal_ids),", "torch.randint(tokenizer.vocab_size,")],
     test_oracles.check_mask_tokens_selects_whole_words_at_the_rate_asked),
    (data, "mask_tokens", "the probability argument ignored",
     [("< probability)", "< 0.15)")], test_oracles.check_mask_tokens_selects_whole_words_at_the_rate_asked),
    (data, "mask_tokens", "the probability argument ignored (the fallback's check)",
     [("< probability)", "< 0.15)")], test_oracles.check_mask_tokens_fallback_masks_one_whole_word),
    (data, "mask_tokens", "the fallback masks one piece instead of the whole word",
     [("selected[row] = (word_index[row] == word_index[row, column]) & candidates[row]",
       "selected[row, column] = True")],
     test_oracles.check_mask_tokens_fallback_masks_one_whole_word),
    (data, "itm_pairs", "the negative is always the first allowed row",
     [("torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)", "allowed.float().argmax(1)")],
     test_oracles.check_itm_pairs),
    (data, "itm_pairs", "a one-row batch labelled 0",
     [("torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)",
       "torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)")], test_oracles.check_itm_pairs),
    (finetune, "vqa_losses", "soft targets binarised",
     [('targets = batch["targets"]', 'targets = (batch["targets"] > 0).float()')],
     test_oracles.check_vqa_losses_with_soft_scores),
    (finetune, "vqa_losses", "vqa_score_sum taken from the best target",
     [("targets.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)", "targets.max(1).values")],
     test_oracles.check_vqa_losses_with_soft_scores),
]


def broken_version(function, edits):
    """The function compiled again from its source with the edits made, in its module's namespace."""
    source = textwrap.dedent(inspect.getsource(function))
    for text, replacement in edits:
        assert source.count(text) == 1, (f"{function.__module__}.{function.__name__} changed: {text!r} is not in it "
                                         "once; write this broken version anew for the new code")
        source = source.replace(text, replacement)
    namespace = dict(function.__globals__)
    exec(compile(source, f"<broken {function.__module__}.{function.__name__}>", "exec"), namespace)
    return namespace[function.__name__]


@pytest.mark.parametrize("module, name, broken, edits, check", MUTANTS,
                         ids=[f"{name}: {broken}" for _, name, broken, _, _ in MUTANTS])
def test_broken_version_fails_its_check(monkeypatch, module, name, broken, edits, check):
    check()  # the check passes on the project's function...
    monkeypatch.setattr(module, name, broken_version(getattr(module, name), edits))
    with pytest.raises(AssertionError):
        check()  # ...and fails on the broken one
