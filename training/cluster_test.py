"""Tests which placement a config gives, and its one-line errors."""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from runtime import errors
from training import cluster
from training import config as config_lib

tf1 = tf.compat.v1


class JoinTest(tf.test.TestCase):

  def test_alone(self):
    placement = cluster.join(config_lib.TrainConfig(master='grpc://x:1'))
    self.assertEqual(placement.master, 'grpc://x:1')
    self.assertIsNone(placement.cluster)
    self.assertTrue(placement.is_chief)
    self.assertIsNone(placement.device_function())
    session_config = tf1.ConfigProto()
    placement.restrict_devices(session_config)
    self.assertEmpty(session_config.device_filters)

  def test_ps_tasks_place_variables_on_them(self):
    placement = cluster.join(config_lib.TrainConfig(ps_tasks=2, task=1))
    self.assertFalse(placement.is_chief)
    with tf.Graph().as_default():
      with tf1.device(placement.device_function()):
        first = tf1.get_variable('first', [1])
        second = tf1.get_variable('second', [1])
    self.assertEqual({first.device, second.device},
                     {'/job:ps/task:0', '/job:ps/task:1'})

  def test_incomplete_cluster_gets_one_line_errors(self):
    for config, message in (
        (config_lib.TrainConfig(ps_hosts=('localhost:1',)),
         'give both --ps_hosts and --worker_hosts'),
        (config_lib.TrainConfig(worker_hosts=('localhost:1',)),
         'give both --ps_hosts and --worker_hosts'),
        (config_lib.TrainConfig(ps_hosts=('localhost:1',),
                                worker_hosts=('localhost:2', 'localhost:3'),
                                task=2),
         r'--task=2 but --worker_hosts lists only 2 hosts'),
        (config_lib.TrainConfig(ps_hosts=('localhost:1',),
                                worker_hosts=('localhost:2',),
                                job_name='ps', task=1),
         r'--task=1 but --ps_hosts lists only 1 hosts')):
      with self.subTest(message):
        with self.assertRaisesRegex(errors.UserError, message):
          cluster.join(config)


if __name__ == '__main__':
  tf.test.main()
