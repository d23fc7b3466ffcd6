"""Trains MobileNet V1 as a TrainConfig says: the session loop and resume.

Killed at any moment, a run started again with the same config resumes from
the last checkpoint in its checkpoint directory that reads back whole, with
its global step. SIGINT or SIGTERM saves a checkpoint at the current step
first; a second signal exits at once. The caller holds the directory's lock
(directory_lock.lock_if_chief).
"""

import signal

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import records
from kernels import batch_norm_relu6
from model import checkpoint_utils
from quantization import weight_rounding
from training import batch_norm_decay
from training import cluster as cluster_lib
from training import config as config_lib
from training import fine_tune
from training import hooks as hooks_lib
from training import precision
from training import train_graph

tf1 = tf.compat.v1


def train(config, resume_command):
  """Builds the training graph and runs it until config.number_of_steps.

  A parameter server (config.job_name 'ps' in a cluster) serves instead,
  until killed.

  Args:
    config: a config.TrainConfig.
    resume_command: the command line that resumes the run, for the message
      of an interrupted one.

  Returns:
    The signal (SIGINT or SIGTERM) that stopped the run before its last
    step, or None.

  Raises:
    errors.UserError: a flag, the dataset or a checkpoint is unusable (the
      message says how to fix it).
  """
  config_lib.check(config)
  placement = cluster_lib.join(config)
  if placement is None:
    return None
  plan = config_lib.resolve(
      config,
      count_train_examples=lambda: records.num_examples(
          config.dataset_dir, 'train'),
      batch_norms_restored=fine_tune.batch_norms_restored(config),
      cpu_features=batch_norm_relu6.cpu_features())

  graph = tf.Graph()
  with graph.as_default():
    if config.random_seed is not None:
      tf1.set_random_seed(config.random_seed)
    with tf1.device(placement.device_function()):
      global_step = tf1.train.get_or_create_global_step()
      skipped_records = records.SkippedRecordCounter()
      dataset = records.build_dataset(
          config.dataset_dir, 'train', config.batch_size, config.image_size,
          is_training=True, skip_corrupt=config.skip_corrupt_records,
          skip_counter=skipped_records, seed=config.random_seed)
      images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
      step = train_graph.build_train_op(images, labels, global_step, plan)
    batch_norm_decay.record(plan.batch_norm_decay,
                            fine_tuned=config.fine_tuning)
    _print_notes(plan)

    resuming = _checkpoint_to_resume(config, placement)
    if resuming:
      done_steps = tf.train.load_checkpoint(resuming).get_tensor('global_step')
      if config.number_of_steps and done_steps >= config.number_of_steps:
        # MonitoredTrainingSession would still run one more step.
        print('Already trained to step %d (--number_of_steps=%d): %s.' %
              (done_steps, config.number_of_steps, resuming), flush=True)
        if placement.is_chief and config_lib.rounds_weights(
            config, weight_rounding.needs_rounding(resuming)):
          _round_weights(config, resuming, skipped_records)
        return None
      print('Resuming from %s.' % resuming, flush=True)
    init_fn = (fine_tune.init_fn(config)
               if config.fine_tuning and not resuming else None)
    scaffold = tf1.train.Scaffold(
        init_fn=init_fn,
        saver=tf1.train.Saver(max_to_keep=config.max_checkpoints_to_keep,
                              sharded=bool(placement.ps_tasks),
                              save_relative_paths=True))
    stopper = hooks_lib.SignalStopHook()
    hooks = [hooks_lib.ProgressHook(step.total_loss, step.learning_rate,
                                    global_step, config.batch_size,
                                    config.log_every_n_steps,
                                    config.number_of_steps, skipped_records),
             stopper] + step.hooks
    if config.number_of_steps:
      hooks.append(tf1.train.StopAtStepHook(last_step=config.number_of_steps))
    print('Training MobileNet V1 %g@%d (%d classes%s) on %s: %d examples, '
          'batch %d.' % (config.depth_multiplier, config.image_size,
                         config.num_classes,
                         ', quantized after step %d' % plan.quant_delay
                         if config.quantize else '',
                         config.dataset_dir, plan.num_train_examples,
                         config.batch_size),
          flush=True)
    session_config = train_graph.session_config()
    placement.restrict_devices(session_config)
    with tf1.train.MonitoredTrainingSession(
        master=placement.master, is_chief=placement.is_chief,
        checkpoint_dir=config.checkpoint_dir, scaffold=scaffold, hooks=hooks,
        save_checkpoint_secs=config.save_interval_secs,
        save_summaries_secs=config.save_summaries_secs,
        log_step_count_steps=0, config=session_config) as session:
      while not session.should_stop() and not stopper.received:
        session.run(step.train_op)
      if stopper.received:
        print('Stopping on %s%s (signal again to exit at once).' % (
            signal.Signals(stopper.received).name,
            ': saving a checkpoint at the current step'
            if placement.is_chief else ''), flush=True)
  final = checkpoint_utils.latest_checkpoint(config.checkpoint_dir)
  if stopper.received:
    print('Interrupted%s. To resume, run the same command again: %s' % (
        '; checkpoint %s' % final if placement.is_chief and final else '',
        resume_command), flush=True)
    return signal.Signals(stopper.received)
  if placement.is_chief and final and config_lib.rounds_weights(
      config, weight_rounding.needs_rounding(final)):
    _round_weights(config, final, skipped_records)
  if placement.is_chief and final:
    print('Done; checkpoint %s%s.' % (
        final, hooks_lib.skipped_records_note(skipped_records)), flush=True)
  return None


def _print_notes(plan):
  """Says which defaults the run chose where users may want others."""
  config = plan.config
  if plan.batch_norms_frozen_from_start:
    print('Batch norms frozen: they normalize with the moving statistics '
          'of the checkpoint (--freeze_bn_delay sets a later step).',
          flush=True)
  elif plan.keeps_checkpoint_averages:
    print('Batch norm moving averages: the checkpoint\'s, kept; after the '
          'last step the weights are rounded for the least output error '
          'and the rounding\'s shift is added to the means '
          '(--batch_norm_decay below 1 skips both).', flush=True)
  elif config.batch_norm_decay is None:
    run_length = ('%d steps' % config.number_of_steps
                  if config.number_of_steps else 'an open-ended run')
    print('Batch norm decay %.6g for %s%s (--batch_norm_decay sets '
          'another).' % (plan.batch_norm_decay, run_length,
                         ' of fine-tuning' if config.fine_tuning else ''),
          flush=True)

  if plan.precision == precision.MIXED_BFLOAT16:
    print('Precision: mixed bfloat16 (convolutions and activations in '
          'bfloat16; variables, batch norm statistics and the loss in '
          'float32): %s.' % plan.precision_reason, flush=True)
  else:
    print('Precision: float32: %s.' % plan.precision_reason, flush=True)

  if plan.distillation_weight:
    print('Distilling from the float model %s: each target is %g of its '
          'softmax and %g of the label (%s).' % (
              config.fine_tune_checkpoint, plan.distillation_weight,
              1 - plan.distillation_weight,
              '--distillation_weight' if config.distillation_weight
              is not None else 'the default with --quantize when '
              'fine-tuning; --distillation_weight=0 trains on the labels '
              'alone'), flush=True)


def _checkpoint_to_resume(config, placement):
  """The checkpoint the run resumes from, or None to start afresh.

  The chief skips (and names) checkpoints that do not read back whole,
  leaving them out of the directory's state file so that TensorFlow's own
  restore does not pick them either.
  """
  if not placement.is_chief:
    return checkpoint_utils.latest_checkpoint(config.checkpoint_dir)
  resuming, skipped = checkpoint_utils.prepare_resume(config.checkpoint_dir)
  for damaged, why in skipped:
    print('Skipping checkpoint %s: %s.' % (damaged, why), flush=True)
  return resuming


def _round_weights(config, checkpoint, skipped_records):
  """Rounds the weights of `checkpoint` in place, saying so.

  A signal during the rounding ends the process before the checkpoint is
  replaced (SIGINT as KeyboardInterrupt, whose message says to rerun).

  Args:
    config: the TrainConfig.
    checkpoint: the checkpoint prefix.
    skipped_records: the records.SkippedRecordCounter in which
      --skip_corrupt_records counts the records it drops.
  """
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  print('Rounding the weights for the least output error over %d training '
        'images and adding the rounding\'s shift to the batch norm means '
        '(weight_rounding.py)...' % config.rounding_examples, flush=True)
  summary = weight_rounding.round_checkpoint(
      checkpoint, config.dataset_dir, config.rounding_examples,
      config.image_size, config.num_classes, config.depth_multiplier,
      skip_corrupt=config.skip_corrupt_records, skip_counter=skipped_records)
  print('Rounded %d layers over %d images: output error variance, summed '
        'over the layers, %.2fx that of nearest rounding.' % (
            summary['layers'], summary['examples'],
            summary['rounded'] / max(summary['nearest'], 1e-30)), flush=True)
