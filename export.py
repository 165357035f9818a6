"""Exports a trained classifier to PyTorch: python export.py --workdir=DIR.

Writes a safetensors state dict for l2lda_jax/torch_models.py (NCHW inputs in [0, 1],
logits out), for AutoAttack / RobustBench; load it with
l2lda_jax.export.load_torch_model. See docs/EXPORT.md.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'best: best on validation, else the latest; latest: the latest.')
flags.DEFINE_string('output', None, 'Output .safetensors file (default WORKDIR/model.safetensors).')
flags.DEFINE_boolean('verbose', False, 'Also print INFO lines, the libraries\' included.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # One result line, not pages of INFO: the export is a short, one-shot command.
  from l2lda_jax import console
  console.quiet_libraries(FLAGS.verbose)
  if not FLAGS.verbose:
    logging.set_verbosity(logging.WARNING)
  from l2lda_jax import export
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'model.safetensors')
  try:
    metadata = export.export_workdir(FLAGS.workdir, output, FLAGS.checkpoint)
  except export.ExportError as e:
    sys.exit(f'error: {e}')
  print(f'wrote {output}: {metadata["model"]}, {metadata["checkpoint"]}, '
        f'NCHW inputs in [0, 1], eps {metadata.get("eps", "unknown")}')


if __name__ == '__main__':
  app.run(main)
