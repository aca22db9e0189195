"""LAPE selection against a hand-computed example."""

import numpy as np
import pytest

from workflow_scripts.neurons.lape import entropy, lape_select


def test_entropy_hand_computed():
    probs = np.array([[[0.5, 0.2]], [[0.5, 0.0]]])  # 2 languages, 1 layer, 2 neurons
    ent = entropy(probs)
    assert ent.shape == (1, 2)
    assert ent[0, 0] == pytest.approx(np.log(2))  # p' = (0.5, 0.5)
    assert ent[0, 1] == pytest.approx(0.0)  # p' = (1, 0): 0 log 0 = 0


def test_lape_select_hand_computed():
    # 3 languages x 1 layer x 5 neurons
    probs = np.array(
        [
            [[0.90, 0.10, 0.50, 0.00, 0.30]],
            [[0.05, 0.10, 0.50, 0.00, 0.30]],
            [[0.05, 0.80, 0.50, 0.00, 0.30]],
        ]
    )
    # 80th percentile of the 15 values (linear interpolation)
    threshold = np.percentile(probs, 80)
    assert threshold == pytest.approx(0.5)
    sel = lape_select(probs, top_share=0.4, percentile=80)  # keep round(0.4 * 5) = 2
    assert sel.threshold == pytest.approx(0.5)
    # neurons 0 (max .9), 1 (max .8), 2 (max .5) pass the filter; 3 and 4 do not
    assert np.isinf(sel.entropy[0, 3]) and np.isinf(sel.entropy[0, 4])
    # entropies: neuron 0: p'=(.9,.05,.05); neuron 1: p'=(.1,.1,.8); neuron 2: uniform (log 3)
    h0 = -(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05))
    h1 = -(2 * 0.1 * np.log(0.1) + 0.8 * np.log(0.8))
    assert sel.entropy[0, 0] == pytest.approx(h0)
    assert sel.entropy[0, 1] == pytest.approx(h1)
    assert sel.entropy[0, 2] == pytest.approx(np.log(3))
    assert sel.selected[0].tolist() == [True, True, False, False, False]
    # neuron 0 -> language 0 only; neuron 1 -> language 2 only
    assert sel.assigned[:, 0, 0].tolist() == [True, False, False]
    assert sel.assigned[:, 0, 1].tolist() == [False, False, True]
    assert not sel.assigned[:, 0, 2:].any()


def test_lape_select_rejects_bad_input():
    with pytest.raises(ValueError, match="languages>=2"):
        lape_select(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="top_share"):
        lape_select(np.zeros((2, 2, 3)), top_share=0)
