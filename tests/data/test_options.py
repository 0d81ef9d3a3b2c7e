"""Dataset options: a typo in data_kwargs is an error naming the option, never silently ignored."""

import pytest

from spikeformer.data import build_dataset
from spikeformer.errors import SpikeformerError


@pytest.mark.parametrize("name,bad,hint", [
    ("events-digits", "split_bi", "split_by"),
    ("dvs128-gesture", "augmnt", "augment"),
    ("cifar10", "re_prb", "re_prob"),
    ("imagenet", "crop_pcts", "crop_pct"),
])
def test_unknown_option_is_rejected_with_a_suggestion(name, bad, hint):
    with pytest.raises(SpikeformerError, match=f"has no option '{bad}'. Did you mean '{hint}'"):
        build_dataset(name, "train", root="/nonexistent", **{bad: 1})


def test_digits_takes_no_options():
    with pytest.raises(SpikeformerError, match="digits' has no option 'augment'"):
        build_dataset("digits", "train", augment=True)
