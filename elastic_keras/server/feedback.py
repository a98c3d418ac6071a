"""What the server says of its model and its online control, and labelled feedback."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from elastic_keras.server import protocol as P

RECENT = 10_000  # answered requests whose images labelled feedback can still name


def metadata(served, backend) -> dict:
    """GET /v2/models/{name}: input and outputs, the threshold in force and its certificate
    in words, the exits and their MACs, online control's state."""
    thr = backend.threshold
    control = backend.control
    status = backend.locked(control.status) if control is not None else None
    return {
        "name": served.name, "versions": ["1"], "platform": f"elastic-keras/{served.format}",
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *served.shape]}],
        "outputs": [{"name": n, "datatype": d, "shape": [-1, served.classes] if n ==
                     "probability" else [-1]} for n, (d, _) in P.OUTPUTS.items()],
        "parameters": {
            "threshold": None if not math.isfinite(thr) or thr > 1 else thr,
            "threshold_source": "online control" if status else served.threshold_source,
            "certificate": served.certificate, "criterion": served.criterion,
            "exits": [{"name": n, "path_macs": int(m)} for n, m in
                      zip(served.exit_names, served.path_macs)],
            "outputs": {n: words for n, (_, words) in P.OUTPUTS.items()},
            "online_control": status,
            "threshold_changes": [c.as_dict() for c in control.changes[-20:]] if control
            else []}}


class Recent:
    """The last RECENT answered requests with an id, for POST .../feedback: their images'
    tickets with online control, classes, exits and audited final classes."""

    def __init__(self, size: int = RECENT):
        self.jobs: OrderedDict = OrderedDict()
        self.size = size

    def keep(self, job) -> None:
        if job.request_id is None or not job.controlled:
            return
        self.jobs[job.request_id] = job
        while len(self.jobs) > self.size:
            self.jobs.popitem(last=False)

    def feedback(self, body, backend) -> dict:
        """{"feedback": [{"id": request id, "classes": [true class per image]}, ...]} (or one
        such object): each image's accuracy drop where known, to online control."""
        items = body.get("feedback", [body])
        if backend.control is None:
            raise P.ProtocolError(409, "online control is off (no certificate, or --audit 0): "
                                       "feedback has nothing to feed")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise P.ProtocolError(400, 'feedback must be {"id": ..., "classes": [...]} or a '
                                       'list of them under "feedback"')
        accepted, unknown = 0, []
        for item in items:
            job = self.jobs.get(str(item.get("id")))
            labels = item.get("classes")
            if job is None:
                unknown.append(item.get("id"))
                continue
            if not isinstance(labels, list) or len(labels) != job.images or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in labels):
                raise P.ProtocolError(400, f"classes of request {item.get('id')!r} must be "
                                           f"{job.images} integers")
            accepted += backend.locked(_labels, backend.control, job, np.asarray(labels))
        return {"accepted": accepted, "unknown_ids": unknown}


def _labels(control, job, labels) -> int:
    """Each image's drop (wrong where the final exit is right) where known: False at the
    final exit, from the audit's final class for an audited one, unknown otherwise."""
    count = 0
    for row, ticket in enumerate(job.tickets):
        if ticket < 0:
            continue
        if job.exits[row] == job.last_exit:
            drop: bool | None = False
        elif job.finals[row] >= 0:
            drop = bool(job.classes[row] != labels[row] and job.finals[row] == labels[row])
        else:
            drop = None
        control.observe_label(int(ticket), drop)
        count += 1
    return count
