"""Config checking for :mod:`crnn.builders`: nodes against their targets' signatures
(:mod:`crnn.config.nodes`), choices against the task (:mod:`crnn.config.fit`); the resolvers ``conf/``
calls (:mod:`crnn.config.resolvers`)."""

from crnn.config.fit import check_fit
from crnn.config.nodes import check_node, instantiate_node, plain, target_of
from crnn.config.resolvers import fused_optimizer

__all__ = ["check_fit", "check_node", "fused_optimizer", "instantiate_node", "plain", "target_of"]
