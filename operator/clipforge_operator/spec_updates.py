"""A spec change to a started job: the live cluster rescaled, anything else the job cannot take refused.

Which changes a started job takes is update_rules.py; this applies them, under the job's lock as
reconcile.py works: the job's ConfigMap (the admitted spec, admission.py) gets the allowed fields,
the current RayJob and its RayCluster the new worker-group bounds (builders.scaling_patch), the job
a SpecUpdateRefused condition for the rest.
"""

from __future__ import annotations

from clipforge.spec import TERMINAL_PHASES, InvalidJobError, VideoCurationJobSpec, parse_job
from clipforge_operator import builders as b
from clipforge_operator.admission import PIN_STATUS_FIELD, SpecNotAdmitted, read_document, spec_hash
from clipforge_operator.pipeline_pods import with_pipeline_image
from clipforge_operator.reconcile import Context, commit, meta_of, on_fresh_read, owned_by
from clipforge_operator.status import ConditionType, EventRecord, StatusEdit
from clipforge_operator.update_rules import classify_spec_change, merge_allowed


def update_spec(ctx: Context, namespace: str, name: str) -> None:
    """Apply a spec change to a started job: rescale the live cluster, refuse pipeline changes.

    A job that has no children yet needs nothing here: the next reconcile builds from the new spec.
    """
    on_fresh_read(ctx, namespace, name, lambda body: _update_spec(ctx, namespace, name, body))


def _update_spec(ctx: Context, namespace: str, name: str, body: dict) -> None:
    st = StatusEdit(body, ctx.now())
    uid = meta_of(body).get("uid", "")
    configmap = ctx.kube.get_configmap(namespace, b.configmap_name(name))
    if configmap is None or not owned_by(configmap, uid):
        return
    try:
        _, accepted = read_document(configmap)
        if spec_hash(configmap) != st.new.get(PIN_STATUS_FIELD):
            raise SpecNotAdmitted("not the admitted ConfigMap")
    except SpecNotAdmitted:
        return  # the reconcile that follows every update fails the job, saying why
    try:
        job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        requested = with_pipeline_image(job.spec, accepted.cluster.image)  # unset: the image it was admitted with
        b.worker_groups(merge_allowed(accepted, requested))
    except (InvalidJobError, b.BuildError) as exc:
        problems = "; ".join(exc.problems) if isinstance(exc, InvalidJobError) else str(exc)
        st.condition(ConditionType.spec_update_refused, True, "InvalidSpec",
                     f"the updated spec is not valid: {problems}")
        st.events.append(EventRecord("Warning", "SpecUpdateRefused", f"invalid spec: {problems}"))
        commit(ctx, namespace, name, st)
        return

    change = classify_spec_change(accepted, requested)
    st.new["observedGeneration"] = st.generation
    if change.scaling or change.operator:
        merged = merge_allowed(accepted, requested)
        merged_job = job.model_copy(update={"spec": merged})
        document = b.build_configmap(merged_job, namespace, uid)["data"]
        ctx.kube.patch_configmap_data(namespace, b.configmap_name(name), document)
        if change.scaling and st.phase not in TERMINAL_PHASES:
            rescaled = _rescale(ctx, namespace, st, merged)
            if rescaled:
                bounds = ", ".join(f"{g.name} {g.min_replicas}-{g.max_replicas}" for g in b.worker_groups(merged))
                st.events.append(EventRecord("Normal", "Rescaled", f"worker groups now {bounds} ({rescaled})"))
    if change.refused:
        message = change.refusal()
        st.condition(ConditionType.spec_update_refused, True, "ImmutableField", message)
        st.events.append(EventRecord("Warning", "SpecUpdateRefused", message))
    elif st.has_condition(ConditionType.spec_update_refused):
        st.condition(ConditionType.spec_update_refused, False, "SpecApplied", "the current spec is applied")
    commit(ctx, namespace, name, st)


def _rescale(ctx: Context, namespace: str, st: StatusEdit, spec: VideoCurationJobSpec) -> str:
    """JSON-patch the worker-group bounds of the current RayJob and then of its live RayCluster;
    says which of them changed."""
    rayjob_name = st.new.get("rayJobName")
    rayjob, patched_rayjob = _patch_bounds(ctx, namespace, "RayJob", rayjob_name, spec)
    cluster_name = st.new.get("rayClusterName") or ((rayjob or {}).get("status") or {}).get("rayClusterName")
    _, patched_cluster = _patch_bounds(ctx, namespace, "RayCluster", cluster_name, spec)
    return ", ".join(p for p in (patched_rayjob, patched_cluster) if p)


def _patch_bounds(ctx: Context, namespace: str, kind: str, name: str | None,
                  spec: VideoCurationJobSpec) -> tuple[dict | None, str]:
    """One live object's worker-group bounds moved to the spec's: the object as read (None if there is
    none) and "<kind> <name>" if it was patched."""
    get, patch, prefix = {
        "RayJob": (ctx.kube.get_rayjob, ctx.kube.json_patch_rayjob, "/spec/rayClusterSpec"),
        "RayCluster": (ctx.kube.get_raycluster, ctx.kube.json_patch_raycluster, "/spec"),
    }[kind]
    live = get(namespace, name) if name else None
    ops = b.scaling_patch(live, spec, prefix) if live is not None else []
    if ops:
        patch(namespace, name, ops)
    return live, f"{kind} {name}" if ops else ""
