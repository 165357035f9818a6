"""What the paper's Tables 1-3 and Figure 2 contain: rows, columns and published numbers.

Jang et al., "Adversarial Defense via Learning to Generate Diverse Attacks", ICCV 2019
(../shared/paper/l2l-da-paper.txt). Every number below is copied from the paper's table or
text named beside it, in percent accuracy on the full MNIST test set at eps = 0.3 (Figure 2:
cross-entropy). A row's model is a `train.py` method plus config overrides: the Table 1
ablations are the overrides of README.md ("Ablations of the paper's Table 1"). Nothing here
runs anything; l2lda_jax.reproduce trains, evaluates and writes the tables.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Model:
  """One trained classifier: `--config.method` plus `--config.FIELD=VALUE` overrides.

  `seed_offset` is added to the run's seed: Table 3's surrogates are trained apart from
  the targets of the same method (the paper's PGD10 target survives PGD10 from surrogate C
  at 95.85%, above its white-box 92.21%, so C is another model).
  """
  name: str  # the run's folder name under the reproduction's workdir
  method: str
  overrides: tuple[tuple[str, str], ...] = ()
  seed_offset: int = 0


@dataclasses.dataclass(frozen=True)
class Column:
  """One attack column: the paper's header and the `evaluate.py --attacks` name that is it.

  `surrogate`: for Table 3 only, the surrogate the white-box attack `attack` runs on.
  """
  label: str
  attack: str
  surrogate: Optional[Model] = None


@dataclasses.dataclass(frozen=True)
class Row:
  """One defense: the paper's row label, its model, the paper's numbers per column and Min."""
  label: str
  model: Model
  paper: tuple[float, ...]  # one per Section column, then the paper's Min


@dataclasses.dataclass(frozen=True)
class Section:
  """One sub-table: Table 1 has (a) and (b), Tables 2 and 3 one each."""
  title: str
  columns: tuple[Column, ...]
  rows: tuple[Row, ...]


@dataclasses.dataclass(frozen=True)
class Table:
  name: str  # table1 | table2 | table3
  caption: str
  sections: tuple[Section, ...]
  autoattack: bool = True  # add an AutoAttack column (white-box tables only)

  def models(self) -> list[Model]:
    """Every model the table needs, surrogates last, each once, in order."""
    found = [row.model for s in self.sections for row in s.rows]
    found += [c.surrogate for s in self.sections for c in s.columns if c.surrogate]
    return list(dict.fromkeys(found))


# ----------------------------------------------------------------------------- models
PLAIN = Model('plain', 'plain')
PGD10 = Model('pgd10', 'pgd', (('attack.pgd_steps', '10'),))
# The authors' PGD-100 step, eps/12 = 0.025 at eps 0.3 (SPEC section 6).
PGD100 = Model('pgd100', 'pgd', (('attack.pgd_steps', '100'), ('attack.pgd_step_size', '0.025')))
CW100 = Model('cw100', 'cw', (('attack.cw_steps', '100'),))
L2L_STAR = Model('l2l_star', 'l2l')
L2LDA = Model('l2lda', 'l2lda')  # R, D, delta, y, gradient normalisation: the full method

# Table 1 ablations (README.md). One-shot: one step of eps (0.3 on MNIST), as L2L*.
_ONE_SHOT = (('generator.steps', '1'), ('generator.step_size', '0.3'))
_NO_DIVERSITY = (('generator.diversity_weight', '0'),)
_NO_DELTA = (('generator.use_delta', 'False'),)
_NO_LABEL = (('generator.use_label', 'False'),)
L2LDA_R0_D0 = Model('l2lda_r0_d0', 'l2lda', _ONE_SHOT + _NO_DIVERSITY)
L2LDA_R0_D1 = Model('l2lda_r0_d1', 'l2lda', _ONE_SHOT)
L2LDA_R1_D0 = Model('l2lda_r1_d0', 'l2lda', _NO_DIVERSITY)
L2LDA_NO_LABEL = Model('l2lda_no_label', 'l2lda', _NO_LABEL)
L2LDA_NO_DELTA = Model('l2lda_no_delta', 'l2lda', _NO_DELTA)
L2LDA_NO_DELTA_NO_LABEL = Model('l2lda_no_delta_no_label', 'l2lda', _NO_DELTA + _NO_LABEL)

# Table 3's surrogates (A) Plain, (B) FGSM, (C) PGD10 LeNet-5.
_SURROGATE_SEED_OFFSET = 100
SURROGATE_A = Model('surrogate_a_plain', 'plain', seed_offset=_SURROGATE_SEED_OFFSET)
SURROGATE_B = Model('surrogate_b_fgsm', 'fgsm', seed_offset=_SURROGATE_SEED_OFFSET)
SURROGATE_C = Model('surrogate_c_pgd10', 'pgd', PGD10.overrides,
                    seed_offset=_SURROGATE_SEED_OFFSET)
TABLE3_SURROGATES = (SURROGATE_A, SURROGATE_B, SURROGATE_C)  # one transfer run covers all three

# ----------------------------------------------------------------------------- Table 1
_TABLE1_COLUMNS = (Column('Natural', 'clean'), Column('FGSM', 'fgsm'),
                   Column('PGD100', 'pgd100'), Column('C&W1000', 'cw1000'))
TABLE1 = Table(
    'table1',
    'Table 1: ablation study on MNIST (accuracy %). R: recursive generation, D: diversity '
    'loss; delta and y: the generator\'s inputs.',
    (Section('(a) Impact of the regularization terms', _TABLE1_COLUMNS, (
        # Paper, Table 1 (a): Natural, FGSM, PGD100, C&W1000, Min.
        Row('L2L*', L2L_STAR, (98.95, 36.59, 0.02, 2.46, 0.02)),
        Row('L2L-DA (R X, D X)', L2LDA_R0_D0, (98.81, 97.02, 87.86, 86.12, 86.12)),
        Row('L2L-DA (R X, D O)', L2LDA_R0_D1, (98.94, 97.46, 91.40, 90.45, 90.45)),
        Row('L2L-DA (R O, D X)', L2LDA_R1_D0, (98.51, 96.91, 93.97, 94.68, 93.97)),
        Row('L2L-DA (R O, D O)', L2LDA, (98.47, 97.87, 95.15, 95.26, 95.15)),
    )),
     Section('(b) Impact of the generator architecture', _TABLE1_COLUMNS, (
         # Paper, Table 1 (b): Natural, FGSM, PGD100, C&W1000, Min.
         Row('L2L-DA (delta O, y O)', L2LDA, (98.47, 97.87, 95.15, 95.26, 95.15)),
         Row('L2L-DA (delta O, y X)', L2LDA_NO_LABEL, (98.51, 96.75, 93.44, 94.02, 93.44)),
         Row('L2L-DA (delta X, y O)', L2LDA_NO_DELTA, (98.50, 95.73, 92.46, 93.59, 92.46)),
         Row('L2L-DA (delta X, y X)', L2LDA_NO_DELTA_NO_LABEL,
             (98.40, 95.58, 92.36, 93.24, 92.36)),
     ))))

# ----------------------------------------------------------------------------- Table 2
TABLE2 = Table(
    'table2',
    'Table 2 (MNIST): white-box attacks (columns) on adversarially trained LeNet-5 '
    'classifiers (rows), accuracy %.',
    (Section('MNIST', (
        Column('Natural', 'clean'), Column('FGSM', 'fgsm'), Column('PGD10', 'pgd10'),
        Column('PGD100', 'pgd100'), Column('C&W100', 'cw100'), Column('C&W1000', 'cw1000'),
        Column('AdvGAN', 'advgan'), Column('GAP', 'gap'), Column('L2L-DA', 'l2lda')), (
        # Paper, Table 2 MNIST: Natural, FGSM, PGD10, PGD100, C&W100, C&W1000, AdvGAN, GAP,
        # L2L-DA, Min.
        Row('Plain', PLAIN, (99.14, 0.90, 0.00, 0.00, 63.14, 0.85, 0.47, 3.94, 0.00, 0.00)),
        Row('PGD10', PGD10, (98.52, 96.14, 92.21, 90.22, 96.66, 88.92, 98.30, 96.56, 89.49,
                             88.92)),
        Row('PGD100', PGD100, (98.29, 94.07, 90.15, 88.93, 96.48, 89.76, 95.00, 96.79, 89.95,
                               88.93)),
        Row('C&W100', CW100, (99.09, 17.54, 0.25, 0.25, 69.99, 0.05, 4.90, 3.74, 34.51, 0.05)),
        Row('L2L*', L2L_STAR, (98.95, 36.59, 0.18, 0.02, 81.63, 2.46, 10.87, 2.01, 3.89, 0.02)),
        Row('L2L-DA (full)', L2LDA, (98.47, 97.87, 95.70, 95.15, 97.26, 95.26, 95.72, 96.92,
                                     94.61, 94.61)),
    )),))

# ----------------------------------------------------------------------------- Table 3
_TABLE3_COLUMNS = tuple(
    Column(f'{attack_label} {letter}', attack, surrogate)
    for attack_label, attack in (('L2L-DA', 'l2lda'), ('PGD10', 'pgd10'), ('PGD100', 'pgd100'))
    for letter, surrogate in zip('ABC', TABLE3_SURROGATES))
TABLE3 = Table(
    'table3',
    'Table 3 (MNIST): black-box transfer, accuracy %. White-box L2L-DA, PGD10 and PGD100 on '
    'surrogates (A) Plain, (B) FGSM, (C) PGD10 LeNet-5, fed to the defenses (rows).',
    (Section('MNIST', _TABLE3_COLUMNS, (
        # Paper, Table 3: L2L-DA A B C, PGD10 A B C, PGD100 A B C, Min.
        Row('Plain', PLAIN, (0.00, 42.70, 90.36, 0.01, 44.46, 86.04, 0.00, 42.36, 84.54, 0.00)),
        Row('PGD10', PGD10, (94.13, 94.61, 96.52, 94.90, 95.45, 95.85, 94.89, 95.52, 95.49,
                             94.13)),
        Row('PGD100', PGD100, (94.23, 94.91, 96.32, 94.91, 95.52, 95.29, 95.05, 95.59, 94.91,
                               94.23)),
        Row('CW100', CW100, (15.15, 41.76, 93.49, 23.55, 41.72, 89.30, 21.47, 39.10, 88.63,
                             15.15)),
        Row('L2L*', L2L_STAR, (59.29, 70.62, 94.79, 69.36, 75.01, 93.43, 66.83, 72.91, 93.13,
                               59.29)),
        Row('L2L-DA (full)', L2LDA, (95.08, 95.40, 96.65, 95.72, 96.00, 96.31, 95.63, 96.09,
                                     96.03, 95.08)),
    )),),
    autoattack=False)  # AutoAttack is white-box: it is Table 2's column for these models

TABLES = {t.name: t for t in (TABLE1, TABLE2, TABLE3)}

# AutoAttack is not in the paper. SPEC section 7 gives an independent evaluation of the
# authors' MNIST L2L-DA model (standard AutoAttack, eps 0.3): shown beside ours, marked.
AUTOATTACK_INDEPENDENT = {L2LDA.name: 87.99}

# ----------------------------------------------------------------------------- Figure 2
@dataclasses.dataclass(frozen=True)
class FigurePanel:
  """One panel of Figure 2: the classifier attacked, and the paper's stated loss of the
  L2L-DA attack after its 10th step (the figure's other curves are given only as a plot)."""
  label: str
  model: Model
  paper_l2lda_final_loss: float


# Paper, Section 4.3 on Figure 2: E[L(x_Ours^(10); theta_Ours)] ~ 1.64 and
# E[L(x_Ours^(10); theta_PGD)] ~ 1.90. The paper's Figure 2 attacks CIFAR-10 classifiers;
# this project draws it for the MNIST models of Table 2, so the two numbers are a scale
# to read ours against, not a target.
FIGURE2_DATASET_OF_PAPER = 'CIFAR-10'
FIGURE2 = (FigurePanel('(a) PGD10 classifier', PGD10, 1.90),
           FigurePanel('(b) L2L-DA classifier', L2LDA, 1.64))

TARGETS = tuple(TABLES) + ('figure2',)
