"""``python -m airflow_provider_maas.emulator`` / ``maas-emulator``: serve the emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
from dataclasses import MISSING, fields
from typing import Any

from airflow_provider_maas.emulator import schedule
from airflow_provider_maas.emulator.config import TERMINAL_STATES, EmulatorConfig
from airflow_provider_maas.emulator.runner import connection_json
from airflow_provider_maas.emulator.server import MaaSEmulator

DEFAULT_CLI_PORT = 8089
#: The ``--fault`` syntax, from the schedule module's docstring.
_FAULT_HELP = "fault schedule (--fault):\n" + (schedule.__doc__ or "").split("\n", 1)[1].strip()

_HELP = {
    "host": "interface to listen on",
    "port": "port to listen on (0 = any free port)",
    "api_key": "the API key clients must send as 'Authorization: Bearer KEY'",
    "endpoint": "the ENDPOINT path segment served",
    "extra_endpoints": "another ENDPOINT the key may use (repeatable)",
    "forbidden_endpoints": "an ENDPOINT answering 403 PERMISSION_DENIED (repeatable)",
    "model": "model name reported by jobs and results",
    "job_duration": "seconds from create to the final state (PENDING for the first quarter, then RUNNING)",
    "final_state": "state jobs end in",
    "fail_every": "every k-th request of a job fails (non-empty status, no response); 0 = none",
    "latency": "seconds added to every API response",
    "image_output": "responses also carry an inline PNG image part",
    "result_padding_bytes": "extra filler text per response (large results for benchmarks)",
    "retention_seconds": "results and files are gone this long after the job ends / the upload",
    "max_requests": "most requests (JSONL lines) per uploaded file",
    "max_bytes": "largest uploaded file in bytes",
    "data_dir": "where uploads and results are stored (a temporary directory by default)",
    "seed": "seed of the shuffling and of the fault injection",
    "rate_429": "fraction of API requests answered 429 RESOURCE_EXHAUSTED with Retry-After",
    "rate_5xx": "fraction of API requests answered 500/503 (sometimes with an HTML or text body)",
    "retry_after": "seconds sent in Retry-After",
    "rate_reset": "fraction of API requests whose connection is dropped without an answer",
    "rate_slow": "fraction of API requests answered after --slow-seconds",
    "slow_seconds": "delay of the slow requests",
    "rate_truncate_download": "fraction of alt=media downloads cut short",
    "rate_corrupt_download": "fraction of alt=media downloads with flipped bytes (same length)",
    "rate_wrong_md5": "fraction of uploads acknowledged with a wrong md5Hash",
    "rate_create_lost_response": "fraction of creates where the job IS created but the answer is lost",
    "access_log_limit": "most entries kept in the in-memory access log",
    "shutdown_timeout": "seconds given to in-flight requests on stop",
    "faults": "schedule a fault: KIND:N:FAULT[=ARG], e.g. create:1:lost-500 (repeatable; see below)",
    "invalid_output_rate": "fraction of answers to schema requests (generationConfig.responseSchema) cut short: "
    "not JSON; chosen by request content",
}
_NEGATED = {
    "shuffle_results": ("--no-shuffle", "keep result lines in input order"),
    "normalise_requests": ("--no-normalise", "echo requests as sent (no null file_data/text fields)"),
    "fault_create": ("--no-fault-create", "never inject the generic faults on job creation"),
}
_REPEATED = {
    "extra_endpoints": "--extra-endpoint",
    "forbidden_endpoints": "--forbidden-endpoint",
    "faults": "--fault",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maas-emulator",
        description="Local emulator of the MaaS_Ge batch API (upload, create, get, results).",
        epilog=_FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(EmulatorConfig):
        default: Any = f.default if f.default is not MISSING else None
        if f.name in _NEGATED:
            flag, text = _NEGATED[f.name]
            parser.add_argument(flag, dest=f.name, action="store_false", help=text)
        elif f.name in _REPEATED:
            parser.add_argument(_REPEATED[f.name], dest=f.name, action="append", default=[], help=_HELP[f.name])
        elif isinstance(default, bool):
            parser.add_argument(
                "--" + f.name.replace("_", "-"), dest=f.name, action="store_true", help=_HELP.get(f.name)
            )
        else:
            kind: Any = str if default is None else type(default)
            text = _HELP.get(f.name, f.name.replace("_", " "))
            kwargs: dict[str, Any] = {"dest": f.name, "type": kind, "default": default}
            kwargs["help"] = f"{text} (default: %(default)s)"
            if f.name == "port":
                kwargs["default"] = DEFAULT_CLI_PORT
            if f.name == "final_state":
                kwargs["choices"] = sorted(TERMINAL_STATES)
            parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    parser.add_argument("--ready-file", help="write the base URL to this file once listening")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    values = {f.name: getattr(args, f.name) for f in fields(EmulatorConfig)}
    for name in _REPEATED:
        values[name] = tuple(values[name])
    return EmulatorConfig(**values)


def _banner(base_url: str, config: EmulatorConfig) -> str:
    conn = connection_json(base_url, config)
    return (
        f"MaaS_Ge batch API emulator listening on {base_url}\n"
        f"  API prefix: {base_url}/v1/ai/batch/gemini/{config.endpoint}\n"
        "Point Airflow at it with:\n"
        f"  export AIRFLOW_CONN_MAAS_DEFAULT={shlex.quote(conn)}\n"
        "or:\n"
        f"  airflow connections add maas_default --conn-json {shlex.quote(conn)}\n"
        "Stop with Ctrl-C (SIGINT) or SIGTERM."
    )


async def _serve(config: EmulatorConfig, ready_file: str | None) -> None:
    emulator = MaaSEmulator(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        base_url = await emulator.start()
        print(_banner(base_url, config), flush=True)
        if ready_file:
            tmp = f"{ready_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(base_url + "\n")
            os.replace(tmp, ready_file)
        await stop.wait()
        print("MaaS_Ge batch API emulator stopping.", flush=True)
    finally:
        await emulator.stop()
        emulator.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"maas-emulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, args.ready_file))
    except OSError as exc:
        print(f"maas-emulator: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
