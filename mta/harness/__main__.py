"""lm-eval's own command line with the `mta` model registered:

    python -m mta.harness --model mta --model_args workdir=runs/x,step=2000,batch_size=8 \\
        --tasks hellaswag --output_path out/
    python -m mta.harness run --model mta --model_args workdir=runs/x --tasks my_task \\
        --include_path path/to/task_yamls

Every argument is lm-eval's (`python -m mta.harness --help`); only `mta` is added to its models.
A bad workdir or model argument is one `error:` line, exit code 2.
"""

import sys

from mta.config import ConfigError
from mta.harness.errors import ModelArgError


def main() -> int:
    from mta.cli.args import user_error
    from mta.harness import register

    try:
        register()
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except (ConfigError, ModelArgError) as err:
        return user_error(err)
    except ValueError as err:  # lm-eval's one for unknown tasks; any other keeps its traceback
        if not str(err).startswith("Tasks not found"):
            raise
        return user_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
