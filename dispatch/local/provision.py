"""Create Dispatch's queue, dead-letter queue and table from deploy/template.yaml.

The embedded local AWS and ``dispatch init`` (against LocalStack or a test
account) both call :func:`provision`, so local resources are built from the very
definitions ``sam deploy`` uses and cannot drift from them::

    sqs, dynamodb = boto3.client("sqs"), boto3.client("dynamodb")
    resources = provision(sqs, dynamodb, prefix="dispatch")
    os.environ.update(resources.as_env())

Resources are named ``<prefix>-tasks``, ``<prefix>-dlq`` and ``<prefix>-state``
(queues get ``.fifo`` appended if the template makes them FIFO). Provisioning is
idempotent: existing resources are kept and brought to the template's settings.
Resource types other than SQS queues and DynamoDB tables (functions, alarms,
schedules...) are not provisioned here and are ignored.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from botocore.exceptions import ClientError

from dispatch.core import constants as c
from dispatch.core.config import Settings
from dispatch.core.errors import AWSError, ConfigurationError
from dispatch.store.aws import error_code

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

# Logical ids in deploy/template.yaml -> the suffix of the physical name.
TASK_QUEUE_ID: Final = "TaskQueue"
DEAD_LETTER_QUEUE_ID: Final = "DeadLetterQueue"
STATE_TABLE_ID: Final = "StateTable"
NAME_SUFFIXES: Final = {
    TASK_QUEUE_ID: "-tasks",
    DEAD_LETTER_QUEUE_ID: "-dlq",
    STATE_TABLE_ID: "-state",
}
SQS_QUEUE_TYPE: Final = "AWS::SQS::Queue"
DYNAMODB_TABLE_TYPE: Final = "AWS::DynamoDB::Table"

SQS_MAX_QUEUE_NAME: Final = 80
# Room for the longest name a prefix gets: "<prefix>-tasks.fifo".
MAX_PREFIX_LENGTH: Final = SQS_MAX_QUEUE_NAME - len("-tasks.fifo")
_PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]+")

# In a source checkout the template is deploy/template.yaml; in an installed
# wheel pyproject force-includes it as dispatch/local/template.yaml.
_CHECKOUT_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"
_PACKAGED_TEMPLATE: Final = "template.yaml"


@dataclass(frozen=True, slots=True)
class Provisioned:
    """Where the provisioned queue, dead-letter queue and table are."""

    queue_url: str
    dlq_url: str
    table: str

    def as_env(self) -> dict[str, str]:
        """``DISPATCH_QUEUE_URL``, ``DISPATCH_DLQ_URL`` and ``DISPATCH_TABLE``."""
        return {
            c.ENV_QUEUE_URL: self.queue_url,
            c.ENV_DLQ_URL: self.dlq_url,
            c.ENV_TABLE: self.table,
        }

    def as_json(self) -> dict[str, str]:
        """The same values under plain keys (what ``dispatch init --json`` prints)."""
        return {"queue_url": self.queue_url, "dlq_url": self.dlq_url, "table": self.table}

    def settings(self, *, region: str, endpoint_url: str | None) -> Settings:
        """The :class:`~dispatch.core.config.Settings` that name them, at ``endpoint_url``."""
        return Settings(
            queue_url=self.queue_url,
            dlq_url=self.dlq_url,
            table=self.table,
            region=region,
            endpoint_url=endpoint_url,
        )


# --- the template ------------------------------------------------------------------
class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation's short-form tags (``!Ref``, ``!GetAtt``...).

    Each tag becomes the long form CloudFormation itself uses (``{"Ref": ...}``,
    ``{"Fn::GetAtt": [resource, attribute]}``, ``{"Fn::Sub": ...}``...), which is
    also what cfn-lint and the SAM translator take.
    """


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)  # !GetAtt Queue.Arn == {"Fn::GetAtt": ["Queue", "Arn"]}
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _construct_tag)
# CloudFormation reads `2010-09-09` as a string; YAML 1.1 would make it a date.
CloudFormationLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_template(path: Path | None = None) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (default: Dispatch's own) into a dict.

    Without ``path`` it reads deploy/template.yaml from the source checkout, or
    the copy packaged in the installed wheel. Raises ConfigurationError if the
    file is missing, is not YAML, or has no ``Resources`` mapping.
    """
    source: Path | Traversable = path if path is not None else _find_template()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the template {source}: {exc}") from exc
    try:
        template = yaml.load(text, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source} is not a valid YAML template: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ConfigurationError(f"{source} is not a CloudFormation template (no Resources)")
    return template


def _find_template() -> Path | Traversable:
    if _CHECKOUT_TEMPLATE.is_file():
        return _CHECKOUT_TEMPLATE
    packaged = importlib.resources.files("dispatch.local") / _PACKAGED_TEMPLATE
    if packaged.is_file():
        return packaged
    raise ConfigurationError(
        f"cannot find Dispatch's template: neither {_CHECKOUT_TEMPLATE} (source checkout) "
        f"nor dispatch/local/{_PACKAGED_TEMPLATE} (installed package) exists"
    )


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if every resource name built from it is valid, else raise.

    SQS queue names allow letters, digits, ``-`` and ``_``, at most 80 characters;
    the limit keeps room for the longest suffix, ``-tasks.fifo``.
    """
    if not _PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigurationError(
            f"resource prefix {prefix!r} may contain only letters, digits, '-' and '_' "
            "(SQS queue name rules) and may not be empty",
            setting="prefix",
        )
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ConfigurationError(
            f"resource prefix {prefix!r} is {len(prefix)} characters; at most "
            f"{MAX_PREFIX_LENGTH} leave room for '-tasks.fifo' in an 80-character queue name",
            setting="prefix",
        )
    return prefix


# --- provisioning ----------------------------------------------------------------------
def provision(
    sqs: SQSClient,
    dynamodb: DynamoDBClient,
    *,
    prefix: str = "dispatch",
    template: Mapping[str, Any] | None = None,
) -> Provisioned:
    """Create (or update) the queue, dead-letter queue and table; return where they are.

    ``sqs`` and ``dynamodb`` are boto3 clients for the target endpoint;
    ``template`` defaults to :func:`load_template`. Safe to run again: it returns
    the same values. Raises ConfigurationError if the template lacks a resource
    or uses what cannot be translated, or if the table exists with another key
    schema; AWSError if an AWS call fails.
    """
    validate_prefix(prefix)
    tpl = load_template() if template is None else template
    resources: Mapping[str, Any] = tpl.get("Resources") or {}
    for logical_id, expected_type in (
        (TASK_QUEUE_ID, SQS_QUEUE_TYPE),
        (DEAD_LETTER_QUEUE_ID, SQS_QUEUE_TYPE),
        (STATE_TABLE_ID, DYNAMODB_TABLE_TYPE),
    ):
        found = (resources.get(logical_id) or {}).get("Type")
        if found != expected_type:
            raise ConfigurationError(
                f"the template has no {expected_type} named {logical_id} (found {found!r})"
            )

    resolver = _Resolver(prefix=prefix, region=sqs.meta.region_name)
    # Queues first, each after the queues it refers to (the DLQ before the queue
    # whose RedrivePolicy names its ARN), then the table.
    order = _creation_order(resources, [TASK_QUEUE_ID, DEAD_LETTER_QUEUE_ID])
    for logical_id in order:
        properties = resolver.resolve(resources[logical_id].get("Properties") or {})
        url, arn, name = _ensure_queue(
            sqs, _physical_name(prefix, logical_id, properties), properties
        )
        resolver.add_queue(logical_id, url=url, arn=arn, name=name)
    table_properties = resolver.resolve(resources[STATE_TABLE_ID].get("Properties") or {})
    table = _physical_name(prefix, STATE_TABLE_ID, table_properties)
    _ensure_table(dynamodb, table, table_properties)
    return Provisioned(
        queue_url=resolver.queues[TASK_QUEUE_ID]["Ref"],
        dlq_url=resolver.queues[DEAD_LETTER_QUEUE_ID]["Ref"],
        table=table,
    )


def _physical_name(prefix: str, logical_id: str, properties: Mapping[str, Any]) -> str:
    name = f"{prefix}{NAME_SUFFIXES[logical_id]}"
    if _is_true(properties.get("FifoQueue")):
        name += ".fifo"
    return name


def _creation_order(resources: Mapping[str, Any], logical_ids: list[str]) -> list[str]:
    """``logical_ids`` sorted so that each comes after those it references."""
    pending = {
        lid: _references(resources[lid].get("Properties")) & set(logical_ids) for lid in logical_ids
    }
    order: list[str] = []
    while pending:
        ready = [lid for lid, needs in pending.items() if needs <= set(order)]
        if not ready:
            raise ConfigurationError(
                f"the template's queues refer to each other in a cycle: {sorted(pending)}"
            )
        for lid in ready:
            order.append(lid)
            del pending[lid]
    return order


def _references(value: Any) -> set[str]:
    """Logical ids named by Ref / Fn::GetAtt / Fn::Sub anywhere inside ``value``."""
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref" and isinstance(arg, str):
            return {arg}
        if key == "Fn::GetAtt" and isinstance(arg, list) and arg:
            return {str(arg[0])}
        if key == "Fn::Sub":
            text = arg[0] if isinstance(arg, list) else arg
            names = {m.split(".", 1)[0] for m in re.findall(r"\$\{([^}!]+)\}", str(text))}
            return names | _references(arg[1:] if isinstance(arg, list) else None)
    return set().union(*(_references(v) for v in value.values())) if value else set()


class _Resolver:
    """Evaluates the intrinsic functions these resources use, with what exists so far."""

    def __init__(self, *, prefix: str, region: str) -> None:
        self.queues: dict[str, dict[str, str]] = {}
        self._pseudo: dict[str, str | None] = {
            "AWS::Region": region,
            "AWS::StackName": prefix,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        self._functions: dict[str, Callable[[Any], Any]] = {
            "Ref": self._ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
        }

    def add_queue(self, logical_id: str, *, url: str, arn: str, name: str) -> None:
        """Make a created queue's Ref and attributes available to later resources."""
        self.queues[logical_id] = {"Ref": url, "Arn": arn, "QueueName": name, "QueueUrl": url}
        # arn:<partition>:sqs:<region>:<account>:<name>: the account is known now.
        partition, account = arn.split(":")[1], arn.split(":")[4]
        self._pseudo.update({"AWS::Partition": partition, "AWS::AccountId": account})

    def resolve(self, value: Any) -> Any:
        """``value`` with every supported intrinsic function replaced by its result."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key in self._functions:
                return self._functions[key](arg)
            if key.startswith("Fn::") or key == "Condition":
                raise ConfigurationError(
                    f"the template uses {key} in a queue or table property; "
                    "provisioning supports Ref, Fn::GetAtt, Fn::Sub and Fn::Join there"
                )
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: Any) -> Any:
        if name in self._pseudo:
            return self._pseudo[name]
        if str(name).startswith("AWS::"):
            raise ConfigurationError(
                f"the template uses {name} before provisioning can know it (AWS::AccountId "
                "is known once a queue exists)"
            )
        return self._attribute(str(name), "Ref")

    def _get_att(self, arg: Any) -> str:
        resource, attribute = (arg.split(".", 1) if isinstance(arg, str) else arg)[:2]
        return self._attribute(str(self.resolve(resource)), str(self.resolve(attribute)))

    def _attribute(self, logical_id: str, attribute: str) -> str:
        attributes = self.queues.get(logical_id)
        if attributes is None or attribute not in attributes:
            raise ConfigurationError(
                f"the template refers to {logical_id}.{attribute}, which provisioning cannot "
                "resolve (only the queues' Ref, Arn, QueueName and QueueUrl)"
            )
        return attributes[attribute]

    def _sub(self, arg: Any) -> str:
        text, variables = (arg[0], self.resolve(arg[1])) if isinstance(arg, list) else (arg, {})

        def substitute(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression.startswith("!"):
                return "${" + expression[1:] + "}"  # ${!Literal} is an escaped ${Literal}
            if expression in variables:
                return str(variables[expression])
            if "." in expression:
                return self._get_att(expression)
            return str(self._ref(expression))

        return re.sub(r"\$\{([^}]+)\}", substitute, str(text))

    def _join(self, arg: Any) -> str:
        delimiter, items = arg
        return str(delimiter).join(str(self.resolve(item)) for item in self.resolve(items))


# --- SQS ------------------------------------------------------------------------------
# CloudFormation property -> SQS attribute; values become strings on the wire.
_QUEUE_ATTRIBUTES: Final[dict[str, QueueAttributeNameType]] = {
    "ContentBasedDeduplication": "ContentBasedDeduplication",
    "DeduplicationScope": "DeduplicationScope",
    "DelaySeconds": "DelaySeconds",
    "FifoQueue": "FifoQueue",
    "FifoThroughputLimit": "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds": "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId": "KmsMasterKeyId",
    "MaximumMessageSize": "MaximumMessageSize",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy": "RedriveAllowPolicy",
    "RedrivePolicy": "RedrivePolicy",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
    "VisibilityTimeout": "VisibilityTimeout",
}
_QUEUE_IGNORED: Final = frozenset({"QueueName", "Tags"})  # we name queues; tags handled apart


def queue_attributes(properties: Mapping[str, Any]) -> dict[QueueAttributeNameType, str]:
    """The CreateQueue attributes for resolved ``AWS::SQS::Queue`` properties."""
    attributes: dict[QueueAttributeNameType, str] = {}
    for key, value in properties.items():
        if key in _QUEUE_IGNORED or value is None:
            continue
        attribute = _QUEUE_ATTRIBUTES.get(key)
        if attribute is None:
            raise ConfigurationError(
                f"the template sets {key} on a queue, which provisioning does not know how "
                "to apply (add it to dispatch/local/provision.py so local and cloud agree)"
            )
        if isinstance(value, dict | list):
            attributes[attribute] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            attributes[attribute] = "true" if value else "false"
        else:
            attributes[attribute] = str(value)
    return attributes


def _ensure_queue(sqs: SQSClient, name: str, properties: Mapping[str, Any]) -> tuple[str, str, str]:
    """Create the queue or bring an existing one to these attributes; (url, arn, name)."""
    attributes = queue_attributes(properties)
    tags = {str(t["Key"]): str(t["Value"]) for t in properties.get("Tags") or []}
    try:
        try:
            if tags:
                created = sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)
            else:
                created = sqs.create_queue(QueueName=name, Attributes=attributes)
            url = created["QueueUrl"]
        except ClientError as exc:
            # AWS refuses CreateQueue when the queue exists with other attributes;
            # idempotent provisioning updates it to the template's instead.
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            # FifoQueue cannot change (nor be set again) on an existing queue.
            mutable: dict[QueueAttributeNameType, str] = {
                k: v for k, v in attributes.items() if k != "FifoQueue"
            }
            if mutable:
                sqs.set_queue_attributes(QueueUrl=url, Attributes=mutable)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    except ClientError as exc:
        raise _aws_error(exc, f"queue {name}") from exc
    return url, arn, name


# --- DynamoDB ------------------------------------------------------------------------------
def table_request(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """The CreateTable request for resolved ``AWS::DynamoDB::Table`` properties."""
    key_schema = [dict(k) for k in properties.get("KeySchema") or []]
    if not key_schema:
        raise ConfigurationError(f"the template's {STATE_TABLE_ID} has no KeySchema")
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": key_schema,
        "AttributeDefinitions": [dict(d) for d in properties.get("AttributeDefinitions") or []],
        "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if request["BillingMode"] == "PROVISIONED":
        request["ProvisionedThroughput"] = dict(properties["ProvisionedThroughput"])
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if properties.get(index_kind):
            request[index_kind] = [dict(i) for i in properties[index_kind]]
    if properties.get("StreamSpecification"):
        request["StreamSpecification"] = {
            "StreamEnabled": True,
            **properties["StreamSpecification"],
        }
    sse = properties.get("SSESpecification") or {}
    if _is_true(sse.get("SSEEnabled")):
        # CloudFormation says SSEEnabled where the API says Enabled.
        request["SSESpecification"] = {"Enabled": True}
        for key in ("SSEType", "KMSMasterKeyId"):
            if sse.get(key):
                request["SSESpecification"][key] = sse[key]
    tags = [{"Key": str(t["Key"]), "Value": str(t["Value"])} for t in properties.get("Tags") or []]
    if tags:
        request["Tags"] = tags
    return request


def _ensure_table(dynamodb: DynamoDBClient, name: str, properties: Mapping[str, Any]) -> None:
    """Create the table, or check an existing one's key; then apply TTL and PITR."""
    request = table_request(name, properties)
    try:
        try:
            dynamodb.create_table(**request)
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":
                raise
            _check_key_schema(dynamodb, name, request["KeySchema"], request["AttributeDefinitions"])
        # Real DynamoDB takes seconds to create a table; the emulator none.
        dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 90}
        )
        ttl = properties.get("TimeToLiveSpecification") or {}
        if _is_true(ttl.get("Enabled")) and ttl.get("AttributeName"):
            _ensure_ttl(dynamodb, name, str(ttl["AttributeName"]))
        pitr = properties.get("PointInTimeRecoverySpecification") or {}
        if _is_true(pitr.get("PointInTimeRecoveryEnabled")):
            dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
    except ClientError as exc:
        raise _aws_error(exc, f"table {name}") from exc


def _check_key_schema(
    dynamodb: DynamoDBClient,
    name: str,
    key_schema: list[dict[str, Any]],
    definitions: list[dict[str, Any]],
) -> None:
    """Refuse an existing table whose key is not the template's."""
    described = dynamodb.describe_table(TableName=name)["Table"]
    types = {
        d["AttributeName"]: d["AttributeType"] for d in described.get("AttributeDefinitions", [])
    }
    expected_types = {d["AttributeName"]: d["AttributeType"] for d in definitions}
    actual = [
        (k["AttributeName"], k["KeyType"], types.get(k["AttributeName"]))
        for k in described.get("KeySchema", [])
    ]
    expected = [
        (k["AttributeName"], k["KeyType"], expected_types.get(k["AttributeName"]))
        for k in key_schema
    ]
    if actual != expected:
        raise ConfigurationError(
            f"DynamoDB table {name} exists with key schema {_describe_key(actual)}, but Dispatch "
            f"needs {_describe_key(expected)}; delete the table or choose another prefix",
            setting=c.ENV_TABLE,
        )


def _describe_key(key: Sequence[tuple[str, str, str | None]]) -> str:
    return ", ".join(f"{name} {key_type} ({attr_type or '?'})" for name, key_type, attr_type in key)


def _ensure_ttl(dynamodb: DynamoDBClient, name: str, attribute: str) -> None:
    # AWS refuses to enable TTL that is already enabled, so look first.
    current = dynamodb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    if (
        current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        and current.get("AttributeName") == attribute
    ):
        return
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"AttributeName": attribute, "Enabled": True}
    )


# --- helpers ----------------------------------------------------------------------------
def _is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _aws_error(exc: ClientError, what: str) -> AWSError:
    error = exc.response.get("Error", {})
    operation = str(getattr(exc, "operation_name", "") or "unknown")
    code = str(error.get("Code", "")) or None
    return AWSError(
        f"provisioning {what}: {operation} failed: {code}: {error.get('Message', exc)}",
        operation=operation,
        code=code,
    )
