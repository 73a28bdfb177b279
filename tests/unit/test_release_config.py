"""deploy.stages, deploy.rollout, deploy.data_capture and notifications: defaults, and one clear message per mistake."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.release import notification_patterns, stage_event


def test_stages_default_to_a_staging_and_a_production_endpoint():
    config = load_config()
    assert config.deploy.stages.staging.endpoint_name == "image-classification-staging"
    assert config.deploy.stages.production.endpoint_name == "image-classification"
    assert load_config(local=True).deploy.rollout.wait_interval_s == 2  # the local block's short baking period
    event = stage_event(config, "production")
    assert event["endpoint_name"] == "image-classification" and event["data_capture_percent"] == 100
    assert "data_capture_uri" not in stage_event(load_config(overrides=["deploy.data_capture.enabled=false"]),
                                                 "staging")


@pytest.mark.parametrize(("override", "message"), [
    ("deploy.stages.staging.endpoint_name=image-classification", "both use endpoint 'image-classification'"),
    ("deploy.stages.production.instance_type=m5.large", "is not a SageMaker instance type"),
    ("deploy.stages.staging.endpoint_nam=x", "unknown key; did you mean 'endpoint_name'?"),
    ("deploy.rollout.canary_percent=80", "less than or equal to 50"),
    ("deploy.data_capture.sampling_percentage=101", "less than or equal to 100"),
    ("notifications.topic_arn=my-topic", "is not an SNS topic ARN"),
])  # fmt: skip
def test_mistakes_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load_config(overrides=[override])


def test_notification_rules_name_this_pipeline_and_both_endpoints():
    config = load_config(overrides=["notifications.topic_arn=arn:aws:sns:us-east-1:111122223333:alerts"])
    patterns = notification_patterns(config)
    assert patterns["pipeline_failed"]["detail"]["pipelineArn"] == [
        {"equals-ignore-case": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/image-classification"}]
    assert patterns["endpoint_failed"]["detail"]["EndpointName"] == ["image-classification-staging",
                                                                      "image-classification"]
