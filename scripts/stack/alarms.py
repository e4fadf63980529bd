"""template.yaml's alarms, dashboard and gradual deploys, written from its functions and tables
(`scripts/dev gen-alarms`) and checked against them (`check_alarms`).

What it writes, and nothing else (the parameters, conditions and Globals they use are
template.yaml's own, and checked here):

- in every function, after its other properties: `AutoPublishAliasAllProperties: true` (a
  version whenever a property changes; SAM takes it in Globals, cfn-lint does not),
  `AutoPublishCodeSha256: !Ref ReleaseId` (a version at every release: SAM's hash does not
  see parameter values) and a `DeploymentPreference` whose rollback alarms are the API's 5xx
  rate and the function's own errors, throttles and p99 latency, only under a gradual
  `DeploymentStrategy` (Globals give the `Type`; a function's `!If` replaces, not extends, a
  Globals list, so the API alarm is listed in every function);
- the section between BEGIN and END before `Outputs:`: the alarm topic (with AlarmEmail), the
  API and security alarms, three alarms per function, one per table, and the dashboard.

Re-running it on a template it wrote changes nothing; after a function or table is added or
removed, it adds or removes theirs. The metrics it reads are the functions' own (shared's
metrics module: CloudWatch Embedded Metric Format in their logs, namespace METRICS_NAMESPACE,
the stack's NamePrefix) and AWS's (AWS/ApiGateway, AWS/Lambda, AWS/DynamoDB)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import TEMPLATE, StackError
from .template import _CfnLoader, functions

BEGIN = "  # BEGIN alarms and dashboard (written by `scripts/dev gen-alarms`: edit scripts/stack/alarms.py)"
END = "  # END alarms and dashboard"
DEPLOY_COMMENT = "      # Gradual deploys, rolled back by these alarms (written by `scripts/dev gen-alarms`)."
DEPLOY_KEYS = ("AutoPublishAliasAllProperties", "AutoPublishCodeSha256", "DeploymentPreference")
FIX = "fix: scripts/dev gen-alarms"

# Alarms every function's gradual deploy watches beside its own.
API_ALARM = "ApiServerErrorRateAlarm"
# What check_alarms requires of Globals.Function (the generated parts rely on it).
ALIAS = "live"
# The CloudWatch alarm widget shows at most 100 alarms.
ALARM_WIDGET_MAX = 100


@dataclass(frozen=True)
class Fn:
    logical_id: str
    binary: str
    condition: str | None

    @property
    def stem(self) -> str:
        return self.logical_id[:-len("Function")] if self.logical_id.endswith("Function") else self.logical_id

    @property
    def alarms(self) -> list[str]:
        return [f"{self.stem}ErrorsAlarm", f"{self.stem}ThrottlesAlarm", f"{self.stem}LatencyAlarm"]


@dataclass(frozen=True)
class Table:
    logical_id: str
    condition: str | None

    @property
    def alarm(self) -> str:
        return f"{self.logical_id}ThrottlesAlarm"


def parse(text: str) -> dict[str, Any]:
    return yaml.load(text, Loader=_CfnLoader)


def template_parts(template: dict[str, Any]) -> tuple[list[Fn], list[Table]]:
    resources = template["Resources"]
    fns = [Fn(lid, binary, resources[lid].get("Condition")) for lid, binary in functions(template).items()]
    tables = [Table(lid, res.get("Condition")) for lid, res in resources.items()
              if res.get("Type") == "AWS::DynamoDB::Table"]
    return fns, tables


# ---------------------------------------------------------------------------------------------
# YAML of the alarms section
# ---------------------------------------------------------------------------------------------

ACTIONS = """\
      AlarmActions: !If [HasAlarmEmail, [!Ref AlarmTopic], !Ref AWS::NoValue]
      OKActions: !If [HasAlarmEmail, [!Ref AlarmTopic], !Ref AWS::NoValue]
"""


def _condition(condition: str | None) -> str:
    return f"    Condition: {condition}\n" if condition else ""


def _function_alarms(fn: Fn) -> str:
    errors, throttles, latency = fn.alarms
    b, c = fn.binary, _condition(fn.condition)
    return f"""\
  {errors}:
    Type: AWS::CloudWatch::Alarm
{c}    Properties:
      AlarmName: !Sub "${{NamePrefix}}-{b}-errors"
      AlarmDescription: "{b}: failed invocations (a panic, a timeout, a crash at start). Rolls back a gradual deploy. README: Operating it."
      Namespace: AWS/Lambda
      MetricName: Errors
      Dimensions: [{{Name: FunctionName, Value: !Ref {fn.logical_id}}}]
      Statistic: Sum
      Period: 60
      EvaluationPeriods: 1
      Threshold: 1
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
{ACTIONS}
  {throttles}:
    Type: AWS::CloudWatch::Alarm
{c}    Properties:
      AlarmName: !Sub "${{NamePrefix}}-{b}-throttles"
      AlarmDescription: "{b}: invocations refused for want of concurrency (answered 5xx). Rolls back a gradual deploy. README: Operating it."
      Namespace: AWS/Lambda
      MetricName: Throttles
      Dimensions: [{{Name: FunctionName, Value: !Ref {fn.logical_id}}}]
      Statistic: Sum
      Period: 60
      EvaluationPeriods: 1
      Threshold: 1
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
{ACTIONS}
  {latency}:
    Type: AWS::CloudWatch::Alarm
{c}    Properties:
      AlarmName: !Sub "${{NamePrefix}}-{b}-p99-latency"
      AlarmDescription: !Sub "{b}: p99 latency over ${{LatencyP99Threshold}} ms in 3 of 5 minutes. Rolls back a gradual deploy. README: Operating it."
      Namespace: !Ref NamePrefix
      MetricName: Latency
      Dimensions: [{{Name: Function, Value: {b}}}]
      ExtendedStatistic: p99
      Period: 60
      EvaluationPeriods: 5
      DatapointsToAlarm: 3
      Threshold: !Ref LatencyP99Threshold
      ComparisonOperator: GreaterThanThreshold
      TreatMissingData: notBreaching
{ACTIONS}"""


def _table_alarm(table: Table) -> str:
    t = table.logical_id
    metric = "{{Namespace: AWS/DynamoDB, MetricName: {name}, Dimensions: [{{Name: TableName, Value: !Ref {t}}}]}}"
    return f"""\
  {table.alarm}:
    Type: AWS::CloudWatch::Alarm
{_condition(table.condition)}    Properties:
      AlarmName: !Sub "${{{t}}}-throttled"
      AlarmDescription: !Sub "${{{t}}}: DynamoDB throttled reads or writes in 2 of 5 minutes. README: Operating it."
      Metrics:
        - Id: throttled
          Label: Throttled reads and writes
          Expression: FILL(reads, 0) + FILL(writes, 0)
        - Id: reads
          MetricStat:
            Metric: {metric.format(name="ReadThrottleEvents", t=t)}
            Period: 60
            Stat: Sum
          ReturnData: false
        - Id: writes
          MetricStat:
            Metric: {metric.format(name="WriteThrottleEvents", t=t)}
            Period: 60
            Stat: Sum
          ReturnData: false
      EvaluationPeriods: 5
      DatapointsToAlarm: 2
      Threshold: 1
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
{ACTIONS}"""


HEADER = """\
  # ---------------------------------------------------------------------------------------
  # Alarms and the dashboard. The functions publish their own metrics without a call: each
  # request ends with one CloudWatch Embedded Metric Format line in its log, in the
  # namespace NamePrefix (METRICS_NAMESPACE): Requests by Function and StatusClass, Latency by
  # Function, AuthFailures by Reason, CodeCheckFailures and Locks (in all and by Function).
  # Beside AWS's own metrics (API Gateway, Lambda, DynamoDB) they feed:
  #   - the API's 5xx rate (ServerErrorRateThreshold, in percent of requests);
  #   - per function: its failed invocations, its throttles and its p99 latency
  #     (LatencyP99Threshold); these and the 5xx rate roll back a gradual deploy of that
  #     function (DeploymentPreference, Globals);
  #   - a spike of failed code checks or of locks across all users (CodeCheckFailuresThreshold,
  #     LocksThreshold in 5 minutes): someone guessing codes;
  #   - per table: throttled reads and writes;
  # and the dashboard <NamePrefix> shows them. With AlarmEmail, every alarm mails its changes
  # (ALARM and back to OK) through an SNS topic encrypted with a key of its own: CloudWatch
  # cannot publish to a topic under the AWS managed key alias/aws/sns (its key policy does not
  # let CloudWatch use it). Without it, the alarms only change state. Counts treat missing
  # data (no traffic) as not breaching. README "Operating it" says what to do when one fires.
  # ---------------------------------------------------------------------------------------
  AlarmTopicKey:
    Type: AWS::KMS::Key
    Condition: HasAlarmEmail
    Properties:
      Description: !Sub "${NamePrefix} alarm notifications (SNS topic encryption)"
      EnableKeyRotation: true
      PendingWindowInDays: 7
      KeyPolicy:
        Version: "2012-10-17"
        Statement:
          # The account administers the key through IAM, as with any key.
          - Sid: AccountAdministers
            Effect: Allow
            Principal:
              AWS: !Sub "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"
            Action: kms:*
            Resource: "*"
          # CloudWatch alarms publish to the topic: SNS encrypts each message with a data key
          # the publisher must be allowed to make.
          - Sid: CloudWatchAlarmsPublish
            Effect: Allow
            Principal:
              Service: cloudwatch.amazonaws.com
            Action: [kms:Decrypt, kms:GenerateDataKey*]
            Resource: "*"

  AlarmTopic:
    Type: AWS::SNS::Topic
    Condition: HasAlarmEmail
    Properties:
      TopicName: !Sub "${NamePrefix}-alarms"
      DisplayName: !Sub "${NamePrefix} alarms"
      KmsMasterKeyId: !Ref AlarmTopicKey

  # The address gets a confirmation mail first: nothing is delivered until it is confirmed.
  AlarmEmailSubscription:
    Type: AWS::SNS::Subscription
    Condition: HasAlarmEmail
    Properties:
      TopicArn: !Ref AlarmTopic
      Protocol: email
      Endpoint: !Ref AlarmEmail

  ApiServerErrorRateAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "${NamePrefix}-api-5xx-rate"
      AlarmDescription: !Sub "The HTTP API answered more than ${ServerErrorRateThreshold}% of its requests with a 5xx in 2 of 3 minutes (a function's 500 or 503, a failed or throttled invocation). Rolls back a gradual deploy. README: Operating it."
      Metrics:
        - Id: rate
          Label: 5xx responses (% of requests)
          Expression: 100 * FILL(errors, 0) / requests
        - Id: errors
          MetricStat:
            Metric: {Namespace: AWS/ApiGateway, MetricName: 5xx, Dimensions: [{Name: ApiId, Value: !Ref HttpApi}]}
            Period: 60
            Stat: Sum
          ReturnData: false
        - Id: requests
          MetricStat:
            Metric: {Namespace: AWS/ApiGateway, MetricName: Count, Dimensions: [{Name: ApiId, Value: !Ref HttpApi}]}
            Period: 60
            Stat: Sum
          ReturnData: false
      EvaluationPeriods: 3
      DatapointsToAlarm: 2
      Threshold: !Ref ServerErrorRateThreshold
      ComparisonOperator: GreaterThanThreshold
      TreatMissingData: notBreaching
""" + ACTIONS + """
  CodeCheckFailuresAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "${NamePrefix}-code-check-failures"
      AlarmDescription: !Sub "At least ${CodeCheckFailuresThreshold} failed code checks (2FA, backup and email-change codes) in 5 minutes across all users: someone may be guessing codes. README: Operating it."
      Namespace: !Ref NamePrefix
      MetricName: CodeCheckFailures
      Statistic: Sum
      Period: 300
      EvaluationPeriods: 1
      Threshold: !Ref CodeCheckFailuresThreshold
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
""" + ACTIONS + """
  LocksAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: !Sub "${NamePrefix}-locks"
      AlarmDescription: !Sub "At least ${LocksThreshold} code checks locked (5 failures in a row) in 5 minutes across all users: someone may be guessing codes on many accounts. README: Operating it."
      Namespace: !Ref NamePrefix
      MetricName: Locks
      Statistic: Sum
      Period: 300
      EvaluationPeriods: 1
      Threshold: !Ref LocksThreshold
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
""" + ACTIONS


# ---------------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------------

NS = "${NamePrefix}"
REGION = "${AWS::Region}"


def _metric(namespace: str, name: str, dims: dict[str, str], **opts: Any) -> list[Any]:
    row: list[Any] = [namespace, name]
    for k, v in dims.items():
        row += [k, v]
    if opts:
        row.append(opts)
    return row


def _graph(title: str, metrics: list[Any], *, stat: str = "Sum", period: int = 60, width: int = 8,
           height: int = 6, annotations: list[dict[str, Any]] | None = None, yaxis: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    props: dict[str, Any] = {"title": title, "region": REGION, "view": "timeSeries", "stacked": False,
                             "stat": stat, "period": period, "metrics": metrics}
    if annotations:
        props["annotations"] = {"horizontal": annotations}
    if yaxis:
        props["yAxis"] = yaxis
    return {"type": "metric", "width": width, "height": height, "properties": props}


def _text(markdown: str, height: int = 2) -> dict[str, Any]:
    return {"type": "text", "width": 24, "height": height, "properties": {"markdown": markdown}}


def _search(metric: str, dimension: str, stat: str, period: int) -> dict[str, Any]:
    return {"expression": f"SEARCH('{{\"{NS}\",{dimension}}} MetricName=\"{metric}\"', '{stat}', {period})",
            "id": f"s_{metric.lower()}", "label": ""}


def dashboard_widgets(fns: list[Fn], tables: list[Table]) -> list[dict[str, Any]]:
    # Conditional resources may not exist: the dashboard names only the unconditional ones.
    fns = [f for f in fns if not f.condition]
    tables = [t for t in tables if not t.condition]
    api = {"ApiId": "${HttpApi}"}
    alarms = [API_ALARM, "CodeCheckFailuresAlarm", "LocksAlarm"]
    alarms += [a for f in fns for a in f.alarms] + [t.alarm for t in tables]
    widgets: list[dict[str, Any]] = [
        _text(f"# {NS}: users API\nAlarms first (red: in ALARM). Every alarm and what to do when it fires: "
              "README, *Operating it*. Metrics of the functions: namespace `" + NS + "` (their logs' "
              "Embedded Metric Format lines)."),
    ]
    for i in range(0, len(alarms), ALARM_WIDGET_MAX):
        chunk = alarms[i:i + ALARM_WIDGET_MAX]
        widgets.append({"type": "alarm", "width": 24, "height": 2 + (len(chunk) + 5) // 6,
                        "properties": {"title": "Alarms", "sortBy": "stateUpdatedTimestamp",
                                       "alarms": [f"${{{a}.Arn}}" for a in chunk]}})
    widgets += [
        _text("## The API", 1),
        _graph("Requests, 4xx and 5xx (per minute)", [
            _metric("AWS/ApiGateway", "Count", api, label="requests"),
            _metric("AWS/ApiGateway", "4xx", api, label="4xx"),
            _metric("AWS/ApiGateway", "5xx", api, label="5xx"),
        ]),
        _graph("5xx rate (% of requests)", [
            [{"expression": "100 * FILL(errors, 0) / requests", "label": "5xx %", "id": "rate"}],
            _metric("AWS/ApiGateway", "5xx", api, id="errors", visible=False),
            _metric("AWS/ApiGateway", "Count", api, id="requests", visible=False),
        ], annotations=[{"label": "alarm", "value": "${ServerErrorRateThreshold}"}]),
        _graph("Latency (ms)", [
            _metric("AWS/ApiGateway", "Latency", api, stat="p50", label="p50"),
            _metric("AWS/ApiGateway", "Latency", api, stat="p99", label="p99"),
            _metric("AWS/ApiGateway", "IntegrationLatency", api, stat="p99", label="integration p99"),
        ], stat="p99"),
        _text("## The functions (one per route)", 1),
        _graph("p99 latency by function (ms)", [
            _metric(NS, "Latency", {"Function": f.binary}, label=f.binary) for f in fns
        ], stat="p99", annotations=[{"label": "alarm", "value": "${LatencyP99Threshold}"}]),
        _graph("5xx answers by function", [
            _metric(NS, "Requests", {"Function": f.binary, "StatusClass": "5xx"}, label=f.binary) for f in fns
        ]),
        _graph("Failed invocations (Lambda Errors) by function", [
            _metric("AWS/Lambda", "Errors", {"FunctionName": f"${{{f.logical_id}}}"}, label=f.binary) for f in fns
        ]),
        _graph("Throttles by function", [
            _metric("AWS/Lambda", "Throttles", {"FunctionName": f"${{{f.logical_id}}}"}, label=f.binary)
            for f in fns
        ]),
        _graph("Concurrent executions (account, maximum)", [
            ["AWS/Lambda", "ConcurrentExecutions", {"label": "all functions of the account"}],
        ], stat="Maximum"),
        _graph("DynamoDB throttled requests by table", [
            row for t in tables for row in (
                _metric("AWS/DynamoDB", "ReadThrottleEvents", {"TableName": f"${{{t.logical_id}}}"},
                        label=f"${{{t.logical_id}}} reads"),
                _metric("AWS/DynamoDB", "WriteThrottleEvents", {"TableName": f"${{{t.logical_id}}}"},
                        label=f"${{{t.logical_id}}} writes"),
            )
        ]),
        _text("## Security: codes, locks and refused credentials (per 5 minutes)", 1),
        _graph("Failed code checks and locks (all users)", [
            _metric(NS, "CodeCheckFailures", {}, label="failed code checks"),
            _metric(NS, "Locks", {}, label="locks"),
        ], period=300, annotations=[
            {"label": "code-check alarm", "value": "${CodeCheckFailuresThreshold}"},
            {"label": "lock alarm", "value": "${LocksThreshold}"},
        ]),
        _graph("Failed code checks by function", [[_search("CodeCheckFailures", "Function", "Sum", 300)]],
               period=300),
        _graph("Refused credentials by reason", [[_search("AuthFailures", "Reason", "Sum", 300)]], period=300),
        _text("## Each function: requests by status class (left) and p99 latency in ms (right)", 1),
    ]
    for f in fns:
        widgets.append(_graph(f.binary, [
            _metric(NS, "Requests", {"Function": f.binary, "StatusClass": c}, label=c) for c in ("2xx", "4xx", "5xx")
        ] + [_metric(NS, "Latency", {"Function": f.binary}, stat="p99", label="p99 ms", yAxis="right")]))
    return widgets


def _dashboard(fns: list[Fn], tables: list[Table]) -> str:
    widgets = dashboard_widgets(fns, tables)
    body = "{\"widgets\": [\n" + ",\n".join(json.dumps(w, separators=(", ", ": ")) for w in widgets) + "\n]}"
    # Annotation values are numbers: the parameter's value, not a string.
    body = re.sub(r'"(\$\{[A-Za-z0-9]+Threshold\})"', r"\1", body)
    indented = "".join(f"        {line}\n" for line in body.splitlines())
    return f"""\
  # One page for the whole API: the alarms' states, then the API, the functions, DynamoDB, the
  # security counters, and a graph per function.
  Dashboard:
    Type: AWS::CloudWatch::Dashboard
    Properties:
      DashboardName: !Ref NamePrefix
      DashboardBody: !Sub |
{indented}"""


def render_section(fns: list[Fn], tables: list[Table]) -> str:
    parts = [BEGIN + "\n", HEADER]
    for fn in fns:
        parts.append("\n  # " + fn.binary + ": failed invocations, throttles, p99 latency.\n" + _function_alarms(fn))
    parts.append("\n  # DynamoDB: throttled requests per table.\n")
    parts.append("\n".join(_table_alarm(t) for t in tables))
    parts.append("\n" + _dashboard(fns, tables))
    parts.append(END + "\n")
    return "".join(parts)


def render_deploy_block(fn: Fn) -> str:
    alarms = "            - ".join(f"!Ref {a}\n" for a in [API_ALARM, *fn.alarms])
    return (f"{DEPLOY_COMMENT}\n"
            "      AutoPublishAliasAllProperties: true\n"
            "      AutoPublishCodeSha256: !Ref ReleaseId\n"
            "      DeploymentPreference:\n"
            "        Alarms: !If\n"
            "          - DeployGradually\n"
            f"          - - {alarms}"
            "          - []\n")


# ---------------------------------------------------------------------------------------------
# Editing template.yaml's text
# ---------------------------------------------------------------------------------------------

_RESOURCE = re.compile(r"^  ([A-Za-z0-9]+):\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _resource_spans(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Logical id -> (first line, end) of every resource in the Resources section (end: the
    first line after it that is at the resources' indentation or less: the next resource, a
    comment before it, or the next section)."""
    try:
        start = lines.index("Resources:\n")
    except ValueError as e:
        raise StackError("template.yaml: no Resources: section") from e
    spans: dict[str, tuple[int, int]] = {}
    current: str | None = None
    first = 0
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) == 0:
            break
        if line.strip() and _indent(line) <= 2:
            if current is not None:
                spans[current] = (first, i)
                current = None
            m = _RESOURCE.match(line)
            if m:
                current, first = m.group(1), i
        i += 1
    if current is not None:
        spans[current] = (first, i)
    return spans


def _properties_span(lines: list[str], first: int, end: int) -> tuple[int, int]:
    """(the `Properties:` line, the line after its last non-blank line) within a resource."""
    for i in range(first, end):
        if lines[i] == "    Properties:\n":
            j = i + 1
            last = i
            while j < end and (not lines[j].strip() or _indent(lines[j]) > 4):
                if lines[j].strip():
                    last = j
                j += 1
            return i, last + 1
    raise StackError(f"template.yaml: {lines[first].strip()} has no Properties")


def _without_deploy_block(lines: list[str], props: int, props_end: int) -> list[str]:
    """The Properties lines without what render_deploy_block writes."""
    out: list[str] = []
    skipping = False
    for line in lines[props + 1:props_end]:
        if skipping and (not line.strip() or _indent(line) > 6):
            continue
        skipping = False
        if line.rstrip("\n") == DEPLOY_COMMENT:
            continue
        if _indent(line) == 6 and line.strip().split(":", 1)[0] in DEPLOY_KEYS:
            skipping = True
            continue
        out.append(line)
    return out


def update_text(text: str) -> str:
    """template.yaml's text with every function's deploy block and the alarms section as
    they must be for its functions and tables (the same text when they already are)."""
    fns, tables = template_parts(parse(text))
    lines = text.splitlines(keepends=True)
    # The alarms section: replaced where it is, else put before Outputs (or at the end).
    if BEGIN + "\n" in lines:
        b = lines.index(BEGIN + "\n")
        try:
            e = lines.index(END + "\n", b)
        except ValueError as exc:
            raise StackError(f"template.yaml: `{BEGIN.strip()}` without `{END.strip()}`") from exc
        del lines[b:e + 1]
        while b > 0 and not lines[b - 1].strip():
            del lines[b - 1]
            b -= 1
    else:
        b = lines.index("Outputs:\n") if "Outputs:\n" in lines else len(lines)
        while b > 0 and not lines[b - 1].strip():
            b -= 1
    tail = lines[b:]
    while tail and not tail[0].strip():
        tail.pop(0)
    section = render_section(fns, tables).splitlines(keepends=True)
    lines = lines[:b] + ["\n"] + section + (["\n"] + tail if tail else [])
    # Each function's deploy block, last in its Properties. From the bottom up, so that the
    # spans of the functions above stay right.
    spans = _resource_spans(lines)
    for fn in sorted(fns, key=lambda f: spans[f.logical_id][0], reverse=True):
        first, end = spans[fn.logical_id]
        props, props_end = _properties_span(lines, first, end)
        kept = _without_deploy_block(lines, props, props_end)
        while kept and not kept[-1].strip():
            kept.pop()
        block = render_deploy_block(fn).splitlines(keepends=True)
        lines[props + 1:props_end] = kept + block
    return "".join(lines)


def write_alarms(path: Path = TEMPLATE) -> bool:
    """Rewrites template.yaml's generated parts from its current text (read, changed and written
    at once, so that edits made meanwhile are kept). True when anything changed."""
    text = path.read_text(encoding="utf-8")
    new = update_text(text)
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------

def _globals_problems(template: dict[str, Any]) -> list[str]:
    g = (template.get("Globals") or {}).get("Function") or {}
    problems = []
    if g.get("AutoPublishAlias") != ALIAS:
        problems.append(f"Globals.Function.AutoPublishAlias is not {ALIAS!r}: the functions would deploy without "
                        "a version, an alias or a gradual deploy")
    pref = g.get("DeploymentPreference") or {}
    if pref.get("Type") != {"Ref": "DeploymentStrategy"}:
        problems.append("Globals.Function.DeploymentPreference.Type is not !Ref DeploymentStrategy")
    if "Alarms" in pref:
        problems.append("Globals.Function.DeploymentPreference has Alarms: every function's own `Alarms: !If` "
                        "replaces a Globals list (SAM merges lists only with lists), so list them per function "
                        "(render_deploy_block) instead")
    variables = (g.get("Environment") or {}).get("Variables") or {}
    if variables.get("METRICS_NAMESPACE") != {"Ref": "NamePrefix"}:
        problems.append("Globals.Function.Environment.Variables.METRICS_NAMESPACE is not !Ref NamePrefix: the "
                        "alarms and the dashboard read the functions' metrics in the namespace NamePrefix")
    params = template.get("Parameters") or {}
    for name in ("AlarmEmail", "DeploymentStrategy", "ReleaseId", "ServerErrorRateThreshold", "LatencyP99Threshold",
                 "CodeCheckFailuresThreshold", "LocksThreshold"):
        if name not in params:
            problems.append(f"Parameters: {name} is missing (the alarms or the deploys use it)")
    conditions = template.get("Conditions") or {}
    for name in ("HasAlarmEmail", "DeployGradually"):
        if name not in conditions:
            problems.append(f"Conditions: {name} is missing (the alarms or the deploys use it)")
    return problems


def check_alarms(path: Path = TEMPLATE) -> list[str]:
    """What is missing or stale in template.yaml's alarms, dashboard and functions'
    DeploymentPreference for its functions and tables ([] when they match)."""
    text = path.read_text(encoding="utf-8")
    try:
        expected_text = update_text(text)
    except StackError as e:
        return [str(e)]
    actual, expected = parse(text), parse(expected_text)
    problems = [f"template.yaml: {p}" for p in _globals_problems(actual)]
    if expected_text == text:
        return problems
    have, want = actual["Resources"], expected["Resources"]
    fns, tables = template_parts(expected)
    owner = {a: f"function {f.binary}" for f in fns for a in f.alarms}
    owner.update({t.alarm: f"table {t.logical_id}" for t in tables})
    rollback = {f.logical_id: ", ".join([API_ALARM, *f.alarms]) for f in fns}
    found = []
    for lid, res in want.items():
        if lid not in have:
            found.append(f"{lid} ({owner.get(lid, res['Type'])}) is missing")
        elif res != have[lid]:
            if lid in rollback:
                found.append(f"{lid}: its {', '.join(DEPLOY_KEYS)} (rollback alarms {rollback[lid]}) are not what "
                             "gen-alarms writes")
            else:
                found.append(f"{lid} ({owner.get(lid, res['Type'])}) is stale")
    for lid in have:
        if lid not in want:
            found.append(f"{lid} is not one gen-alarms writes for the template's functions and tables (left over?)")
    if not found:
        found.append("the alarms section or a deploy block differs from what gen-alarms writes (comments or layout)")
    return problems + [f"template.yaml: {p} ({FIX})" for p in found]
