"""`fogwheel sim`: a discrete-event simulation of a fog that drives the coordinator's core/.

- `churn`: device availability, per cluster of like hosts (SETI@home's, as far as cited);
- `model`: the scenario, the fleet and the job mix, drawn with numpy from one seed;
- `world`: the coordinator's state and round trip, every decision made by core/;
- `queue`: the pending queue in the store's order;
- `engine`: the event loop; `run`: every policy on one scenario, and the report.
"""

from fogwheel.sim.engine import Outcome, simulate
from fogwheel.sim.model import Scenario, build_fleet, build_jobs
from fogwheel.sim.world import World

__all__ = ["Outcome", "Scenario", "World", "build_fleet", "build_jobs", "simulate"]
