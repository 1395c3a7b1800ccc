"""The child side of harness.run_child: `python -m mta.bench.child ITEMS_JSON` measures each
item (a JSON object whose "kind" names the measurement) and prints one prefixed JSON line per
item. A failure is reported as the item's status and ends the row there."""

import json
import sys

from mta.bench import attention, data, decode, hf_import
from mta.bench.harness import RESULT_PREFIX, looks_oom

MEASURE = {
    "attention": attention.measure,
    "decode": decode.measure,
    "model_decode": decode.measure_model,
    "ingest": data.measure_ingest,
    "hf_import": hf_import.measure,
}


def main(items_json: str) -> int:
    for item in json.loads(items_json):
        try:
            result = {"status": "ok", **MEASURE[item["kind"]](item)}
        except Exception as err:  # reported as the item's status; the row stops there
            message = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            result = {"status": "oom" if looks_oom(message) else f"error: {message}"}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
