"""Where a training process runs: alone, or as a task of a ps/worker cluster.

Parameter-server training on TensorFlow's own runtime: every task gets the
same --ps_hosts/--worker_hosts and its own --job_name/--task. Parameter
servers hold the variables and serve until killed; workers run steps, and
worker 0, the chief, initializes, saves checkpoints and writes summaries.
"""

import dataclasses
from typing import Optional

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from runtime import errors

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where this worker trains.

  Attributes:
    master: the session target ('' for this process).
    ps_tasks: parameter-server tasks the variables are spread over; 0 keeps
      them in this process.
    task: this worker's task index.
    cluster: the ClusterSpec, or None outside a --ps_hosts/--worker_hosts
      cluster.
  """

  master: str
  ps_tasks: int
  task: int
  cluster: Optional[tf.train.ClusterSpec]

  @property
  def is_chief(self):
    """Whether this worker initializes, saves checkpoints and summaries."""
    return self.task == 0

  def device_function(self):
    """The device function placing variables on the ps tasks, or None."""
    if not self.ps_tasks:
      return None
    return tf1.train.replica_device_setter(
        self.ps_tasks, worker_device='/job:worker/task:%d' % self.task,
        cluster=self.cluster)

  def restrict_devices(self, session_config):
    """Limits a worker's session to the parameter servers and itself.

    So that it does not wait on (or hang after) the other workers.

    Args:
      session_config: a tf.compat.v1.ConfigProto, changed in place.
    """
    if self.cluster:
      session_config.device_filters.extend(
          ['/job:ps', '/job:worker/task:%d' % self.task])


def _cluster_spec(config):
  """The ClusterSpec of --ps_hosts/--worker_hosts, or None without them."""
  if not config.ps_hosts and not config.worker_hosts:
    return None
  if not config.ps_hosts or not config.worker_hosts:
    raise errors.UserError('give both --ps_hosts and --worker_hosts '
                           '(host:port lists) for parameter-server training')
  jobs = {'ps': list(config.ps_hosts), 'worker': list(config.worker_hosts)}
  if config.task >= len(jobs[config.job_name]):
    raise errors.UserError('--task=%d but --%s_hosts lists only %d hosts' %
                           (config.task, config.job_name,
                            len(jobs[config.job_name])))
  return tf.train.ClusterSpec(jobs)


def join(config):
  """Starts this task's server in the cluster the config names, if any.

  A parameter server serves until its process is killed.

  Args:
    config: a TrainConfig.

  Returns:
    The Placement of this worker; None for a parameter server, when its
    server stops.

  Raises:
    errors.UserError: the host lists are incomplete or do not list --task.
  """
  cluster = _cluster_spec(config)
  if not cluster:
    return Placement(master=config.master, ps_tasks=config.ps_tasks,
                     task=config.task, cluster=None)
  server = tf.distribute.Server(cluster, job_name=config.job_name,
                                task_index=config.task)
  if config.job_name == 'ps':
    print('Parameter server %d serving on %s.' %
          (config.task, config.ps_hosts[config.task]), flush=True)
    server.join()
    return None
  return Placement(master=server.target, ps_tasks=len(config.ps_hosts),
                   task=config.task, cluster=cluster)
