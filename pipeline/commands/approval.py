"""From approval to production: ``approve``, ``reject``, ``promote``, ``endpoints``, ``teardown-local``.

In AWS (the default) ``approve``/``reject`` call UpdateModelPackage; the EventBridge rule that ``upsert`` creates
deploys an approved version to the staging endpoint through the deploy Lambda. ``promote`` smoke-tests staging and
invokes the same Lambda for production. With ``--local`` the same commands act on the local registry and the local
stage endpoints under ``--store``, and ``approve`` runs the deploy to staging itself, as the rule would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.errors import UserError


def _common(parser: argparse.ArgumentParser, local_runs: bool = False) -> None:
    parser.add_argument("--config", type=Path, default=None, help="pipeline config (default: pipeline.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set deploy.rollout.canary_percent=20 (repeatable)")
    parser.add_argument("--local", action="store_true",
                        help="act on the local registry and local stage endpoints (--store), not on AWS")
    parser.add_argument("--store", type=Path, default=Path(".store"), help="local store (with --local; default .store)")
    if local_runs:
        parser.add_argument("--runs", type=Path, default=Path("runs"),
                            help="local executions, to find the test split (with --local; default runs)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "approve", help="approve a model package version: it deploys to the staging endpoint",
        description="Set a model package version's ModelApprovalStatus to Approved (UpdateModelPackage with an "
        "ApprovalDescription). Default: the newest PendingManualApproval version of model_package_group. In AWS the "
        "approval rule (created by upsert) deploys it to deploy.stages.staging; with --local this command deploys it "
        "to the local staging endpoint and prints the outcome (InService, RolledBack, Failed or Unchanged).")
    p.add_argument("version", nargs="?", help="version number, <group>/<version> or ARN (default: newest pending)")
    p.add_argument("--reason", default=None, help="ApprovalDescription (default: 'approved with python -m pipeline')")
    _common(p)
    p.set_defaults(func=cmd_approve)

    p = subparsers.add_parser(
        "reject", help="reject a model package version (no endpoint changes)",
        description="Set a model package version's ModelApprovalStatus to Rejected with --reason as its "
        "ApprovalDescription. Default: the newest PendingManualApproval version. Endpoints are left as they are.")
    p.add_argument("version", nargs="?", help="version number, <group>/<version> or ARN (default: newest pending)")
    p.add_argument("--reason", required=True, help="why (ApprovalDescription, at most 1024 characters)")
    _common(p)
    p.set_defaults(func=cmd_reject)

    p = subparsers.add_parser(
        "promote", help="smoke-test staging, then deploy what staging serves to production",
        description="Send the test split's images through the staging endpoint; when every request answers and the "
        "accuracy is at least evaluation.accuracy_threshold, deploy the model package staging serves to "
        "deploy.stages.production (blue/green with canary and rollback). Exit status 1 if the smoke test or the "
        "deployment fails (production keeps what it served).")
    p.add_argument("--images", type=Path, default=None,
                   help="ImageFolder tree of test images (default with --local: the test split of the execution "
                        "that registered the package; required in AWS)")
    _common(p, local_runs=True)
    p.set_defaults(func=cmd_promote)

    p = subparsers.add_parser("endpoints", help="show the stage endpoints: status and the model package each serves")
    _common(p)
    p.set_defaults(func=cmd_endpoints)

    p = subparsers.add_parser("teardown-local", help="stop every local stage endpoint under --store")
    p.add_argument("--store", type=Path, default=Path(".store"), help="local store (default .store)")
    p.set_defaults(func=cmd_teardown_local)


def _config(args):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides, local=args.local)


def _print(args, result: dict, line: str) -> None:
    print(json.dumps(result, indent=2, default=str) if args.json else line)


def _deployed_line(result: dict) -> str:
    line = f"{result['stage']} endpoint {result['endpoint_name']}: {result['status']}"
    if result.get("url"):
        line += f" on {result['url']}"
    deployment = result.get("deployment") or {}
    if deployment.get("Seconds") is not None:
        line += (f" ({deployment['Seconds']:.1f} s; canary requests sent {deployment['CanarySent']}, "
                 f"failed {deployment['CanaryFailed']})")
    if result.get("reason"):
        line += f"\n  reason: {result['reason']}"
    return line


def _local_registry(args):
    from pipeline.local.registry import ModelRegistry

    return ModelRegistry(args.store)


def _local_name(args, config) -> str:
    """``<group>/<version>`` (or the ARN) of the version named, else of the newest pending one."""
    from pipeline.local.registry import RegistryError

    if args.version:
        return f"{config.model_package_group}/{args.version}" if args.version.isdigit() else args.version
    try:
        return _local_registry(args).latest(config.model_package_group, "PendingManualApproval")["ModelPackageArn"]
    except RegistryError as error:
        raise UserError(f"{error}; name the version to act on") from error


def _set_status(args, status: str, reason: str) -> dict:
    config = _config(args)
    if args.local:
        from pipeline.local.registry import RegistryError

        try:
            return _local_registry(args).update_model_package(_local_name(args, config), status, reason)
        except RegistryError as error:
            raise UserError(str(error)) from error
    from pipeline import release

    return release.set_approval(config, args.version, status, reason)


def cmd_approve(args) -> int:
    config = _config(args)
    package = _set_status(args, "Approved", args.reason or "approved with python -m pipeline approve")
    arn = package["ModelPackageArn"]
    if not args.local:
        _print(args, {"model_package_arn": arn, "status": "Approved"},
               f"{arn}: Approved. The approval rule deploys it to {config.deploy.stages.staging.endpoint_name}; "
               "follow it with: python -m pipeline endpoints")
        return 0
    from pipeline.local.stages import StageError, deploy_package

    print(f"{arn}: Approved; deploying to staging ({config.deploy.stages.staging.endpoint_name})")
    try:
        result = deploy_package(args.store, config, "staging", arn)
    except StageError as error:
        raise UserError(str(error)) from error
    _print(args, result, _deployed_line(result))
    return 0 if result["status"] in ("InService", "Unchanged") else 1


def cmd_reject(args) -> int:
    package = _set_status(args, "Rejected", args.reason)
    _print(args, {"model_package_arn": package["ModelPackageArn"], "status": "Rejected"},
           f"{package['ModelPackageArn']}: Rejected ({args.reason}); endpoints unchanged")
    return 0


def cmd_promote(args) -> int:
    config = _config(args)
    if args.local:
        from pipeline.local.stages import StageError, promote

        try:
            result = promote(args.store, config, args.images, args.runs)
        except StageError as error:
            raise UserError(str(error)) from error
    else:
        from pipeline import release

        result = release.promote(config, args.images)
    smoke = result.get("smoke_test") or {}
    line = (f"smoke test on staging: accuracy {smoke.get('accuracy', 0):.4f} on {smoke.get('images')} images, "
            f"{smoke.get('errors')} errors (threshold {smoke.get('threshold')})\n") + _deployed_line(result)
    _print(args, result, line)
    return 0 if result["status"] in ("InService", "Unchanged", "Creating", "Updating") else 1


def cmd_endpoints(args) -> int:
    config = _config(args)
    rows = []
    for stage in ("staging", "production"):
        name = getattr(config.deploy.stages, stage).endpoint_name
        if args.local:
            from pipeline.local.stages import describe_endpoint, serving_variant

            described = describe_endpoint(args.store, name)
            variant = serving_variant(described)
            rows.append({"stage": stage, "endpoint_name": name,
                         "status": described["EndpointStatus"] if described else "NotRunning",
                         "model_package_arn": variant["ModelPackageArn"] if variant else None,
                         "url": described["Url"] if described else None,
                         "last_deployment": (described or {}).get("LastDeployment")})  # fmt: skip
        else:
            from pipeline import release

            rows.append({"stage": stage, **release.describe_stage(config, name)})
    lines = [f"{r['stage']:<10} {r['endpoint_name']:<32} {r['status']:<12} {r.get('model_package_arn') or '-'}"
             for r in rows]
    _print(args, {"endpoints": rows}, "\n".join(lines))
    return 0


def cmd_teardown_local(args) -> int:
    from pipeline.local.stages import teardown

    stopped = teardown(args.store)
    print(f"stopped: {', '.join(stopped)}" if stopped else "no local stage endpoint was running")
    return 0
