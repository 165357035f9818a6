"""The names `evaluate.py --attacks=` accepts, parsed into attack specs.

  clean  fgsm  pgd<k>  pgd<k>x<r>  cw<k>  mifgsm<k>  apgd-ce  apgd-t  fab-t  square  square<q>
  autoattack  l2lda  l2l  advgan  gap  transfer

A name means one fixed attack: `pgd100x10` is PGD-100 with 10 random restarts and
best-iterate tracking; `cw1000` is CW with 1000 Adam steps (SPEC section 6); `square`
is the Linf Square attack with AutoAttack's 5,000 queries, `square1000` with 1,000;
`apgd-ce`, `apgd-t` and `fab-t` are AutoAttack's gradient stages (100 iterations; the
targeted ones over the 9 most likely other classes); `autoattack` is AutoAttack's
standard sequence of those four, each on the survivors of the ones before, one row per
stage (l2lda_jax.attacks.autoattack).
"""

import dataclasses
import re

GRADIENT_KINDS = ('fgsm', 'pgd', 'cw', 'mifgsm')
AUTOATTACK_KINDS = ('apgd-ce', 'apgd-t', 'fab-t')  # AutoAttack's gradient stages, standard settings
GENERATOR_KINDS = ('l2lda', 'l2l', 'advgan', 'gap')
SCORE_KINDS = ('square',)  # black-box, from the logits only
KINDS = (('clean',) + GRADIENT_KINDS + AUTOATTACK_KINDS + SCORE_KINDS + ('autoattack',)
         + GENERATOR_KINDS + ('transfer',))
SQUARE_QUERIES = 5000  # AutoAttack's standard budget

_STEPPED = re.compile(r'^(pgd|cw|mifgsm)(\d+)(?:x(\d+))?$')
_SQUARE = re.compile(r'^square(\d+)?$')
HELP = ('clean, fgsm, pgd<k> (e.g. pgd100), pgd<k>x<r> (r restarts), cw<k> (e.g. cw1000), '
        'mifgsm<k>, apgd-ce, apgd-t, fab-t, square (5000 queries), square<q> (q queries), '
        'autoattack (the four in sequence), l2lda, l2l, advgan, gap, transfer')


class AttackNameError(ValueError):
  """An --attacks entry that names no attack; the message says which and what is allowed."""


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  name: str       # as the user wrote it, used as the table row
  kind: str       # one of KINDS
  steps: int = 0  # gradient steps (pgd, cw, mifgsm); query budget (square)
  restarts: int = 1


def parse_attack(name: str) -> AttackSpec:
  """One attack name -> AttackSpec; raises AttackNameError."""
  text = name.strip().lower()
  if text in ('clean', 'fgsm', 'transfer', 'autoattack') + AUTOATTACK_KINDS + GENERATOR_KINDS:
    return AttackSpec(text, text)
  square = _SQUARE.match(text)
  if square:
    queries = int(square.group(1) or SQUARE_QUERIES)
    if queries < 1:
      raise AttackNameError(f'--attacks: {name!r} needs at least one query')
    return AttackSpec(text, 'square', queries)
  match = _STEPPED.match(text)
  if not match:
    raise AttackNameError(f'--attacks: unknown attack {name!r} (known: {HELP})')
  kind, steps, restarts = match.group(1), int(match.group(2)), match.group(3)
  if steps < 1:
    raise AttackNameError(f'--attacks: {name!r} needs at least one step')
  if restarts is not None and kind != 'pgd':
    raise AttackNameError(f'--attacks: restarts (x<r>) are only for pgd, not {name!r}')
  if restarts is not None and int(restarts) < 1:
    raise AttackNameError(f'--attacks: {name!r} needs at least one restart')
  return AttackSpec(text, kind, steps, int(restarts or 1))


def parse_attacks(names) -> list[AttackSpec]:
  """A comma list (or list of names) -> specs, in order; rejects empty lists and repeats."""
  if isinstance(names, str):
    names = names.split(',')
  names = [n for n in (n.strip() for n in names) if n]
  if not names:
    raise AttackNameError(f'--attacks: no attack given (known: {HELP})')
  specs = [parse_attack(n) for n in names]
  seen = set()
  for spec in specs:
    if spec.name in seen:
      raise AttackNameError(f'--attacks: {spec.name!r} is listed twice')
    seen.add(spec.name)
  return specs


def pgd_step_size(eps: float, steps: int) -> float:
  """The authors' PGD step sizes: eps/4 for k = 10 and eps/12 for k = 100 (SPEC section 6).

  Other k take the rule of the nearer of the two (eps/4 up to k = 20); `--pgd_step_size`
  overrides it.
  """
  return eps / 4 if steps <= 20 else eps / 12
