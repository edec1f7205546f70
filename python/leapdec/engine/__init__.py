"""The decoding engine between the models and the methods.

- ``runner``: the cache workspace of a model (``Session``), the step planner, fixed-shape steps
  captured in CUDA graphs (``StaticStep``);
- ``rows``: one per-request state (``Row``) and a batch of them with the call statistics
  (``Rows``), the one commit rule for stop tokens, stop strings and ``max_new_tokens``;
- ``speculative``: the draft / verify / commit loop and the ``Drafter`` protocol;
- ``companions``: the cached loader of heads, drafters, filters and refined weights;
- ``spec``: one ``MethodSpec`` per method (registry, evaluate, CLI and train read it);
- ``sampling``: greedy / temperature / top-k / top-p and stop-token helpers.

``leapdec.engine.speculative`` is imported by the methods that use it (it needs the ops).
"""

from leapdec.engine.rows import FINISH_LENGTH, FINISH_STOP, Row, Rows
from leapdec.engine.runner import Session, StaticStep, StaticSteps, free_workspace, plan_extend
from leapdec.engine.spec import MethodSpec, available_methods, method_spec, register_method, specs

__all__ = ["FINISH_LENGTH", "FINISH_STOP", "MethodSpec", "Row", "Rows", "Session", "StaticStep",
           "StaticSteps", "available_methods", "free_workspace", "method_spec", "plan_extend",
           "register_method", "specs"]
