"""OpenMP must not spin in a process that shares its cores.

torch's CPU kernels run on OpenMP threads that, by default, busy-wait between parallel
regions. Beside orstream's capture, render and encoder threads (and on a loaded machine)
a descheduled spinner stalls the others at every barrier: measured on two cores under
load, eager fp32 took 126-500 ms per frame with spinning and 48-52 ms with passive waiting.
The runtime reads the policy once, when it loads, so this must run before `import torch`;
an explicit OMP_WAIT_POLICY in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
