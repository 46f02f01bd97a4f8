"""elmtune: fine-tune, align, evaluate, merge and ship Apple's OpenELM models.

Importing the package is cheap (no torch). It arranges for ``AutoConfig`` / ``AutoModelForCausalLM`` to load
``model_type="openelm"`` checkpoints with elmtune's native implementation, never with remote code.
"""

from elmtune._autoregister import install as _install_auto_registration

__version__ = "0.1.0"

_install_auto_registration()
