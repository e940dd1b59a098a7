"""What the AWS-family providers put in a pod (:meth:`.base.Provider.pin`): IRSA's and EKS Pod
Identity's projected tokens and variables, as EKS's webhooks add them, an S3-compatible store's
web identity, and the session name that puts the person in the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import names
from ..pinning import project_token, set_env
from . import aws, s3_sts

IRSA_VOLUME = "aws-iam-token"
IRSA_MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def name_the_session(pod: Any, plan: Any) -> None:
    """The session names the person (CloudTrail: assumed-role/<role>/<user>), also on a group's
    role; the webhook sets none, and the SDKs would name it botocore-session-<time>."""
    for container in [*pod.spec.containers, *(pod.spec.init_containers or [])]:
        set_env(container, {"AWS_ROLE_SESSION_NAME": names.role_session_name(plan.user)})


def pin_store_token(pod: Any, settings: Mapping[str, Any]) -> None:
    """An S3-compatible store's web identity: the projected token with the store's audience and
    the variables the AWS SDKs read. No webhook exists on such clusters, so it is always added."""
    project_token(pod, s3_sts.TOKEN_VOLUME, s3_sts.TOKEN_MOUNT_PATH, settings["audience"], settings["expiration"],
                  dict(settings["env"]))


def pin_irsa(pod: Any, plan: Any, role_arn: str) -> None:
    """What EKS's pod-identity webhook adds for the account's role, added by us for the plan's role.

    The webhook looks the ServiceAccount up in its own cache; a pod made right after the
    account was created or re-annotated can miss it (no credentials) or see the old role.
    The webhook leaves alone a container that already has AWS_ROLE_ARN or
    AWS_WEB_IDENTITY_TOKEN_FILE, a mount named ``aws-iam-token`` and a pod volume of that
    name, so nothing is added twice; and the role is the plan's, whatever its cache says.
    """
    annotations = plan.service_account.annotations
    expiration = int(annotations.get(aws.TOKEN_EXPIRATION_ANNOTATION, "86400"))
    env = {"AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": f"{IRSA_MOUNT_PATH}/token"}
    if annotations.get(aws.STS_REGIONAL_ANNOTATION) == "true":
        env["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"
    project_token(pod, IRSA_VOLUME, IRSA_MOUNT_PATH, "sts.amazonaws.com", expiration, env)


POD_IDENTITY_VOLUME = "eks-pod-identity-token"
POD_IDENTITY_MOUNT_PATH = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
POD_IDENTITY_AGENT_URI = "http://169.254.170.23/v1/credentials"


POD_IDENTITY_ROLE_ENV = "CLOUDIDENTITY_AWS_ROLE_ARN"
"""The association's role, for the credentials endpoint to name (the Pod Identity agent's answer
does not); the agent decides what the credentials are, not this variable."""


def pin_pod_identity(pod: Any, role_arn: str) -> None:
    """What EKS's Pod Identity webhook adds to a pod whose ServiceAccount has an association:
    the container-credentials endpoint of the node's Pod Identity agent and a projected token
    for it. The webhook checks associations when the pod is created; one made a moment before
    can be missed, and the pod would start without AWS credentials. Adding them ourselves makes
    the first notebook cell work; the webhook leaves containers that have them alone."""
    project_token(
        pod, POD_IDENTITY_VOLUME, POD_IDENTITY_MOUNT_PATH, "pods.eks.amazonaws.com", 86400,
        {"AWS_CONTAINER_CREDENTIALS_FULL_URI": POD_IDENTITY_AGENT_URI,
         "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": f"{POD_IDENTITY_MOUNT_PATH}/{POD_IDENTITY_VOLUME}",
         POD_IDENTITY_ROLE_ENV: role_arn},
        token_path=POD_IDENTITY_VOLUME,
    )
