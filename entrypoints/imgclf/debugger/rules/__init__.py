"""The five Debugger rules (``smdebug.rules.Rule`` subclasses) and the two profiler rules.

The AWS built-in rules ran in AWS's rule containers and are not in the public smdebug wheel; these follow the
semantics and default parameters of https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(each module documents its rule and where it had to choose). Import needs smdebug; ``params`` does not.
"""

from .loss_not_decreasing import LossNotDecreasing
from .overfit import Overfit
from .overtraining import Overtraining
from .poor_weight_initialization import PoorWeightInitialization
from .vanishing_gradient import VanishingGradient

DEBUGGER_RULE_CLASSES = {
    "VanishingGradient": VanishingGradient,
    "Overfit": Overfit,
    "Overtraining": Overtraining,
    "PoorWeightInitialization": PoorWeightInitialization,
    "LossNotDecreasing": LossNotDecreasing,
}

__all__ = ["DEBUGGER_RULE_CLASSES", *DEBUGGER_RULE_CLASSES]
