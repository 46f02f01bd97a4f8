"""The common prefix of several token sequences, which a shared-prefix row holds once."""

from elmtune.models.attention_mask import common_prefix_length


def test_the_leading_tokens_every_sequence_shares():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2  # the third differs first


def test_one_sequence_the_start_of_another_shares_all_of_itself():
    assert common_prefix_length([[1, 2], [1, 2, 5]]) == 2
    assert common_prefix_length([[4, 4, 4], [4, 4, 4]]) == 3


def test_nothing_shared():
    assert common_prefix_length([[7, 2], [1, 2]]) == 0
    assert common_prefix_length([[], [1, 2]]) == 0
