"""Every attack the evaluation uses, as pure functions of `(logits_fn, x, y, key, ...)`
(SPEC section 6), or trained objects with that call.

The model is a closure (`logits_fn: images -> logits`), so the attacks never import a
classifier. Gradient attacks (gradient.py), AutoAttack's stages and sequence (apgd.py,
fab.py, square.py, autoattack.py), and the learned ones: the recursive L2L-DA cell
(learned.py), the L2L-DA generator fine-tuned as an attack (l2lda_attack.py, which reuses the
training game's objective) and AdvGAN / GAP (generative.py, generative_nets.py).
"""

from l2lda_jax.attacks.gradient import (Best, cw, fgsm, keep_better, mi_fgsm, no_best, pgd,
                                        restart_keys)
from l2lda_jax.attacks.losses import (LOSSES, attack_objective, cross_entropy, margin,
                                      targeted_cross_entropy, targeted_margin)
from l2lda_jax.attacks.projection import project_linf, random_start
from l2lda_jax.attacks.square import SquareResult, square_linf, square_linf_run

__all__ = [
    'Best', 'LOSSES', 'attack_objective', 'cross_entropy', 'cw', 'fgsm', 'keep_better',
    'margin', 'mi_fgsm', 'no_best', 'pgd', 'project_linf', 'random_start', 'restart_keys',
    'SquareResult', 'square_linf', 'square_linf_run', 'targeted_cross_entropy', 'targeted_margin',
]
