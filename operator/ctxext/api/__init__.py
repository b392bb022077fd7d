"""The ContextExtensionJob API (group ctxext.dev, version v1alpha1), defined once as pydantic models."""

from ctxext.api.base import API_VERSION, GROUP, KIND, PLURAL, VERSION
from ctxext.api.job import ContextExtensionJob, ContextExtensionJobSpec, ContextExtensionJobStatus, Phase

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "ContextExtensionJob", "ContextExtensionJobSpec",
           "ContextExtensionJobStatus", "Phase"]
