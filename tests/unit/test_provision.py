"""Reading deploy/template.yaml and turning it into API requests, without any AWS."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatch.core import constants as c
from dispatch.core.errors import ConfigurationError
from dispatch.local import provision as provision_module
from dispatch.local.provision import (
    MAX_PREFIX_LENGTH,
    CloudFormationLoader,
    Provisioned,
    load_template,
    queue_attributes,
    table_request,
    validate_prefix,
)

SHORT_FORMS = """
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Resources:
  Q:
    Type: AWS::SQS::Queue
    Properties:
      Arn: !GetAtt DeadLetterQueue.Arn
      ArnList: !GetAtt [DeadLetterQueue, Arn]
      Name: !Sub "${AWS::StackName}-tasks"
      NameWithVars: !Sub ["${Prefix}-x", {Prefix: !Ref Stage}]
      Joined: !Join [":", [a, !Ref Stage]]
      Picked: !If [IsProd, 10, 20]
      Mapped: !FindInMap [Map, !Ref "AWS::Region", Size]
      First: !Select [0, !GetAZs ""]
      Encoded: !Base64 text
      Imported: !ImportValue shared
      Cond: !Condition IsProd
      Date: 2010-09-09
"""


def test_loader_reads_short_form_tags_as_their_long_form() -> None:
    """Every CloudFormation short-form tag becomes the long form the services
    and tools use (Ref, Fn::GetAtt as [resource, attribute], Fn::Sub...)."""
    template = yaml.load(SHORT_FORMS, Loader=CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    props = template["Resources"]["Q"]["Properties"]

    assert template["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}
    assert props["Arn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert props["ArnList"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert props["Name"] == {"Fn::Sub": "${AWS::StackName}-tasks"}
    assert props["NameWithVars"] == {"Fn::Sub": ["${Prefix}-x", {"Prefix": {"Ref": "Stage"}}]}
    assert props["Joined"] == {"Fn::Join": [":", ["a", {"Ref": "Stage"}]]}
    assert props["Picked"] == {"Fn::If": ["IsProd", 10, 20]}
    assert props["Mapped"] == {"Fn::FindInMap": ["Map", {"Ref": "AWS::Region"}, "Size"]}
    assert props["First"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
    assert props["Encoded"] == {"Fn::Base64": "text"}
    assert props["Imported"] == {"Fn::ImportValue": "shared"}
    assert props["Cond"] == {"Condition": "IsProd"}


def test_loader_keeps_dates_as_strings() -> None:
    """`2010-09-09` stays a string, as CloudFormation reads it (YAML 1.1 would make a date)."""
    template = yaml.load(SHORT_FORMS, Loader=CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    assert template["Resources"]["Q"]["Properties"]["Date"] == "2010-09-09"


def test_loader_refuses_arbitrary_python_objects() -> None:
    """The loader stays safe: a python/object tag is not constructed."""
    with pytest.raises(yaml.YAMLError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=CloudFormationLoader)  # noqa: S506


def test_load_template_finds_dispatchs_own_template() -> None:
    """Without a path, load_template reads deploy/template.yaml: the queue, DLQ and table."""
    template = load_template()

    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    kinds = {name: r["Type"] for name, r in template["Resources"].items()}
    assert kinds["TaskQueue"] == kinds["DeadLetterQueue"] == "AWS::SQS::Queue"
    assert kinds["StateTable"] == "AWS::DynamoDB::Table"
    redrive = template["Resources"]["TaskQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_load_template_names_both_places_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    """When neither the checkout's nor the packaged template exists, the error
    says where it looked."""
    monkeypatch.setattr(provision_module, "_CHECKOUT_TEMPLATE", Path("/nonexistent/template.yaml"))
    monkeypatch.setattr(provision_module, "_PACKAGED_TEMPLATE", "no-such-template.yaml")

    with pytest.raises(ConfigurationError, match=r"/nonexistent/template\.yaml.*no-such-template"):
        load_template()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Resources: [unclosed", "not a valid YAML template"),
        ("just a string", "no Resources"),
        ("Outputs: {}", "no Resources"),
    ],
)
def test_load_template_refuses_what_is_not_a_template(
    tmp_path: Path, content: str, message: str
) -> None:
    """A file that is not YAML, or has no Resources mapping, is a ConfigurationError."""
    path = tmp_path / "template.yaml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        load_template(path)


@pytest.mark.parametrize("prefix", ["dispatch", "a", "my_app-2", "x" * MAX_PREFIX_LENGTH])
def test_validate_prefix_accepts_sqs_queue_name_characters(prefix: str) -> None:
    """Letters, digits, '-' and '_' up to the length that leaves room for '-tasks.fifo':
    every name the provisioner builds from an accepted prefix (each resource, standard or
    FIFO) is a valid SQS queue name (letters, digits, '-', '_', '.fifo'; 80 at most)."""
    assert validate_prefix(prefix) == prefix
    for logical_id in provision_module.NAME_SUFFIXES:
        for fifo in (False, True):
            name = provision_module._physical_name(prefix, logical_id, {"FifoQueue": fifo})
            assert re.fullmatch(r"[A-Za-z0-9_-]+(\.fifo)?", name), name
            assert len(name) <= 80, name
            assert name.endswith(".fifo") is fifo


@pytest.mark.parametrize(
    "prefix",
    ["", "has space", "dots.not.allowed", "slash/", "ünïcode", "x" * (MAX_PREFIX_LENGTH + 1)],
)
def test_validate_prefix_refuses_what_would_make_an_invalid_queue_name(prefix: str) -> None:
    """Anything else is a ConfigurationError naming the prefix."""
    with pytest.raises(ConfigurationError, match="resource prefix") as refused:
        validate_prefix(prefix)
    assert refused.value.setting == "prefix"


def test_queue_attributes_translate_template_properties() -> None:
    """Resolved queue properties become SQS attribute strings: numbers and booleans
    as text, the redrive policy as JSON, Tags and QueueName left out."""
    attributes = queue_attributes(
        {
            "VisibilityTimeout": 60,
            "SqsManagedSseEnabled": True,
            "RedrivePolicy": {"deadLetterTargetArn": "arn:aws:sqs:r:1:dlq", "maxReceiveCount": 100},
            "QueueName": "ignored",
            "Tags": [{"Key": "k", "Value": "v"}],
            "KmsMasterKeyId": None,
        }
    )

    assert attributes == {
        "VisibilityTimeout": "60",
        "SqsManagedSseEnabled": "true",
        "RedrivePolicy": '{"deadLetterTargetArn":"arn:aws:sqs:r:1:dlq","maxReceiveCount":100}',
    }
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 100


def test_queue_attributes_refuse_an_unknown_property() -> None:
    """A property provisioning cannot apply is an error, not silently skipped,
    so local queues never drift from the deployed ones."""
    with pytest.raises(ConfigurationError, match="NewFancySetting"):
        queue_attributes({"NewFancySetting": 1})


def test_table_request_translates_cloudformation_spelling() -> None:
    """The table's CloudFormation properties become a CreateTable request
    (SSEEnabled -> Enabled, on-demand by default, keys as given)."""
    template = load_template()
    request = table_request("x-state", template["Resources"]["StateTable"]["Properties"])

    assert request["TableName"] == "x-state"
    assert request["KeySchema"] == [{"AttributeName": c.TABLE_HASH_KEY, "KeyType": "HASH"}]
    assert request["AttributeDefinitions"][0] == {"AttributeName": "pk", "AttributeType": "S"}
    assert [i["IndexName"] for i in request["GlobalSecondaryIndexes"]] == ["by-status", "by-task"]
    assert request["BillingMode"] == "PAY_PER_REQUEST"
    assert request["SSESpecification"] == {"Enabled": True}
    assert "ProvisionedThroughput" not in request


def test_provision_refuses_a_bad_prefix_before_calling_aws() -> None:
    """An invalid prefix fails fast: no client is even touched."""
    untouchable: Any = object()
    with pytest.raises(ConfigurationError, match="resource prefix"):
        provision_module.provision(untouchable, untouchable, prefix="bad prefix")


def test_provision_refuses_a_template_without_dispatchs_resources() -> None:
    """A template lacking the task queue, DLQ or table names what is missing."""
    untouchable: Any = object()
    template = {"Resources": {"TaskQueue": {"Type": "AWS::SQS::Queue"}}}
    with pytest.raises(ConfigurationError, match="DeadLetterQueue"):
        provision_module.provision(untouchable, untouchable, template=template)


def test_provisioned_exports_the_dispatch_environment() -> None:
    """as_env() gives the variables Settings.from_env reads; as_json() plain keys."""
    resources = Provisioned(queue_url="http://q", dlq_url="http://d", table="t-state")

    assert resources.as_env() == {
        c.ENV_QUEUE_URL: "http://q",
        c.ENV_DLQ_URL: "http://d",
        c.ENV_TABLE: "t-state",
    }
    assert resources.as_json() == {
        "queue_url": "http://q",
        "dlq_url": "http://d",
        "table": "t-state",
    }
