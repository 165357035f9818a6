"""Evaluates a trained classifier under a list of attacks: one markdown table, one JSON.

  python evaluate.py --workdir=runs/mnist_cpu_pgd --attacks=clean,pgd100,cw1000
  python evaluate.py --workdir=DIR --attacks=transfer --surrogates=DIR_A,DIR_B

Prints accuracy per attack, the paper's "Min" (lowest single attack) and the per-example
worst case (robust only if an image survives every attack run); writes the same to
--output (default WORKDIR/evaluation.json). --checks adds the sanity checks.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training run to evaluate (its config.json and checkpoints).')
flags.DEFINE_string('checkpoint', 'best', 'best (on validation), latest, or a step number.')
flags.DEFINE_string('checkpoint_dir', '', 'One saved step directory, e.g. WORKDIR/best/12000; '
                    'overrides --checkpoint (the config still comes from --workdir).')
flags.DEFINE_list('attacks', ['clean', 'fgsm', 'pgd100', 'cw1000'],
                  'Comma list: clean, fgsm, pgd<k>, pgd<k>x<r>, cw<k>, mifgsm<k>, l2lda, l2l, '
                  'advgan, gap, apgd-ce, apgd-t, fab-t, square, square<q>, autoattack (the four '
                  'in sequence, one row per stage), transfer.')
flags.DEFINE_float('eps', None, 'Linf radius in [0, 1] (default: the run\'s config.eps).')
flags.DEFINE_integer('num_examples', 0, 'Examples to use (0: the whole split).')
flags.DEFINE_enum('split', 'test', ['test', 'validation'],
                  'test (report), or validation: the held-out training images, for choosing '
                  'between recipes or checkpoints without looking at the test set.')
flags.DEFINE_integer('batch_size', 500, 'Evaluation batch size.')
flags.DEFINE_integer('seed', 0, 'Seed of random starts, z draws and generator training.')
flags.DEFINE_float('pgd_step_size', None, 'PGD step (default: eps/4 for k <= 20, else eps/12).')
flags.DEFINE_list('surrogates', [], 'Workdirs of surrogate classifiers for --attacks=transfer.')
flags.DEFINE_string('transfer_attack', 'pgd40', 'White-box attack run on each surrogate: a '
                    'gradient attack, or l2lda / l2l (a generator trained against it).')
flags.DEFINE_string('transfer_generator_cache', '', 'Folder where --attacks=transfer keeps the '
                    'l2lda / l2l generators it trains on each surrogate; a later evaluation of '
                    'another model with the same surrogate, data and generator flags reads them '
                    'instead of training again (off when empty).')
flags.DEFINE_integer('generator_steps', 1000, 'Training steps of the l2lda/l2l attack generator.')
flags.DEFINE_integer('generator_draws', 10, 'z draws per image of the l2lda attack.')
flags.DEFINE_integer('generator_restarts', 1,
                     'Generators trained per l2lda/l2l attack (seeds seed, seed+1, ...); an '
                     'image is broken if any breaks it. 1: the paper\'s protocol.')
flags.DEFINE_integer('generator_unroll_steps', 10, 'T of the l2lda attack (SPEC section 6).')
flags.DEFINE_string('generative_config_variant', '', 'Variant of configs/advgan.py and '
                    'configs/gap.py for --attacks=advgan,gap (smoke: tiny, for tests).')
flags.DEFINE_boolean('checks', False, 'Also run the sanity checks (see l2lda_jax/sanity.py).')
flags.DEFINE_integer('check_examples', 1000, 'Test examples the sanity checks use.')
flags.DEFINE_integer('check_pgd_steps', 20, 'k of the PGD-k vs PGD-2k convergence check.')
flags.DEFINE_float('large_eps', 0.5, 'The sanity checks\' large eps (accuracy there <= 10%).')
flags.DEFINE_string('figures_dir', '', 'Write Figure 2 (per-step attack loss) and robust '
                    'accuracy vs eps here, PNG + JSON.')
flags.DEFINE_integer('figure_examples', 500, 'Test examples the figures use.')
flags.DEFINE_string('output', '', 'JSON report path (default: WORKDIR/evaluation.json).')
flags.DEFINE_boolean('progress', True, 'Show a progress bar per attack.')
flags.DEFINE_boolean('verbose', False, 'Also print the libraries\' INFO lines (TFDS, orbax, '
                     'JAX, TensorFlow).')
flags.DEFINE_string('save_adversarial', '', 'Write autoattack\'s adversarial examples to this '
                    '.npz (x_adv, labels, clean_correct, broken_at), updated after each stage.')
flags.DEFINE_boolean('resume', True, 'If --output holds a report (interrupted or finished) of '
                     'the same checkpoint, examples, eps and seed, keep the rows of it that '
                     '--attacks asks for and run only the rest.')
flags.mark_flags_as_required(['workdir'])


def write_report(report: dict, output: str) -> None:
  """The JSON report, with the command that made it; replaced as a whole (no torn file)."""
  from l2lda_jax.json_files import write_json_atomic
  write_json_atomic(dict(report, command=' '.join(['python', sys.argv[0]] + sys.argv[1:])),
                    output)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from l2lda_jax import console
  console.quiet_libraries(FLAGS.verbose)
  from l2lda_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX or TensorFlow start threads
  from l2lda_jax import robustness
  from l2lda_jax.attack_specs import AttackNameError, parse_attacks
  from l2lda_jax.data import DataError
  from l2lda_jax.json_files import read_json_object
  try:
    options = robustness.EvalOptions(
        workdir=FLAGS.workdir, attacks=parse_attacks(FLAGS.attacks),
        checkpoint=FLAGS.checkpoint, checkpoint_dir=FLAGS.checkpoint_dir, eps=FLAGS.eps,
        num_examples=FLAGS.num_examples, split=FLAGS.split, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        pgd_step_size=FLAGS.pgd_step_size, surrogates=FLAGS.surrogates,
        transfer_attack=FLAGS.transfer_attack, generator_steps=FLAGS.generator_steps,
        generator_draws=FLAGS.generator_draws, generator_restarts=FLAGS.generator_restarts,
        generator_unroll_steps=FLAGS.generator_unroll_steps,
        transfer_generator_cache=FLAGS.transfer_generator_cache,
        generative_config_variant=FLAGS.generative_config_variant, checks=FLAGS.checks,
        check_examples=FLAGS.check_examples, check_pgd_steps=FLAGS.check_pgd_steps,
        large_eps=FLAGS.large_eps, figures_dir=FLAGS.figures_dir,
        figure_examples=FLAGS.figure_examples, progress=FLAGS.progress,
        save_adversarial=FLAGS.save_adversarial)
    robustness.validate_options(options)
    output = FLAGS.output or os.path.join(FLAGS.workdir, 'evaluation.json')
    if FLAGS.resume:
      options.previous_report = read_json_object(output)
    report = robustness.evaluate(options, log=logging.info,
                                 on_row=lambda partial: write_report(partial, output))
  except (AttackNameError, DataError, robustness.EvaluationError) as e:
    sys.exit(f'error: {e}')
  write_report(report, output)
  print(report['table'])
  for line in report.get('checks_text', []):
    print(line)
  print(f'(written to {output})')


if __name__ == '__main__':
  app.run(main)
