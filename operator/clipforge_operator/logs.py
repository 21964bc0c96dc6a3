"""Structured (JSON) logging for the operator, kopf's and ours alike."""

from __future__ import annotations

import logging

import kopf


def configure(json_logs: bool = True, verbose: bool = False) -> None:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    # Libraries that log request details (URLs, headers) at DEBUG stay at WARNING even when verbose.
    for noisy in ("urllib3", "botocore", "boto3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
