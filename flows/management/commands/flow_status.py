"""Print a flow and the tree of its jobs with their statuses."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from flows.models import Flow
from flows.selectors import flow_jobs_tree, flow_progress


class Command(BaseCommand):
    help = "Show a flow's status, progress, result and its job tree."

    def add_arguments(self, parser) -> None:
        parser.add_argument("flow_id")
        parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")

    def handle(self, *args, flow_id: str, json: bool, **options) -> None:
        flow = Flow.objects.select_related("owner").filter(pk=flow_id).first()
        if flow is None:
            raise CommandError(f"No flow with id {flow_id!r}.")
        progress = flow_progress(flow=flow)
        tree = flow_jobs_tree(flow=flow)
        if json:
            self._print_json(flow, progress, tree)
            return
        self.stdout.write(f"Flow {flow.pk}  {flow.flowname}")
        self.stdout.write(f"  status:    {flow.status}")
        self.stdout.write(f"  owner:     {flow.owner.get_username()}")
        self.stdout.write(f"  progress:  {progress['completed']}/{progress['total']} completed, "
                          f"{progress['failed']} failed ({progress['percentage']}%)")
        for label, value in (("created", flow.created_at), ("started", flow.started_at), ("finished", flow.completed_at)):
            if value:
                self.stdout.write(f"  {label + ':':<10} {value.isoformat()}")
        if flow.result is not None:
            self.stdout.write(f"  result:    {_dumps(flow.result)}")
        if flow.error:
            self.stdout.write(f"  error:     {flow.error}")
        self.stdout.write("Jobs:")
        # Iterative walk: trees may be far deeper than Python's recursion limit.
        stack = [(node, "", index == len(tree) - 1) for index, node in reversed(list(enumerate(tree)))]
        while stack:
            node, prefix, last = stack.pop()
            branch = "└── " if last else "├── "
            line = f"{prefix}{branch}{node['name']} [{node['queue_name']}] {node['status']}  ({node['id']})"
            if node["attempts_made"] > 1:
                line += f"  attempts={node['attempts_made']}"
            if node["error"]:
                line += f"  error: {node['error']}"
            self.stdout.write(line)
            children = node["children"]
            child_prefix = prefix + ("    " if last else "│   ")
            for index in range(len(children) - 1, -1, -1):
                stack.append((children[index], child_prefix, index == len(children) - 1))

    def _print_json(self, flow: Flow, progress: dict, tree: list) -> None:
        self.stdout.write(
            _dumps(
                {
                    "flowId": flow.pk,
                    "flowname": flow.flowname,
                    "status": flow.status,
                    "progress": progress,
                    "result": flow.result,
                    "error": flow.error or None,
                    "jobs": tree,
                }
            )
        )


def _dumps(value) -> str:
    return json.dumps(value, default=str)
