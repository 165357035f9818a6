"""Attacks as pure functions of `(logits_fn, x, y, key, ...)` (SPEC section 6).

The model is a closure (`logits_fn: images -> logits`), so attacks never import
models or training code and the evaluation suite can reuse them as they are.
"""

from l2lda_jax.attacks.gradient import cw, fgsm, pgd
from l2lda_jax.attacks.losses import cross_entropy, margin
from l2lda_jax.attacks.projection import project_linf

__all__ = ['cross_entropy', 'cw', 'fgsm', 'margin', 'pgd', 'project_linf']
