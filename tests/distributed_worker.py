"""One process of a multi-process sweep (``jax.distributed``), for ``tests/test_distributed.py``.

Usage: ``python -m tests.distributed_worker ADDRESS NUM_PROCESSES PROCESS_ID SCENARIO OUT``.
Every process solves its own parts of the sweep on its own devices; process 0 then merges them
and writes the summary.
"""

from __future__ import annotations

import sys

import jax


def main(address: str, num: int, pid: int, scenario_path: str, out: str) -> None:
    jax.distributed.initialize(
        coordinator_address=address, num_processes=num, process_id=pid,
        initialization_timeout=120,
    )  # fmt: skip
    from poa_jax import scenario, sweep

    sc = scenario.load_scenario(scenario_path)
    res = sweep.run_sweep(sc, out, chunk_size=4, part_size=4, progress=False)
    mine = res.summary.get("wall_time_s", {}).get("parts_computed")
    print(f"process {jax.process_index()}/{jax.process_count()} done; rows "
          f"{None if res.table is None else res.table.num_rows}; computed here {mine}")  # fmt: skip
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
