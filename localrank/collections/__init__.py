"""The application layer: documents, chunking, ingestion, jobs, search and evaluation.

`CollectionService` is the only entry point for the HTTP routes and the CLI; it reaches storage
through the store protocol (`localrank.store`) and the model through an `EmbeddingModel`.
"""

from localrank.collections.documents import DocumentIn
from localrank.collections.files import FolderOptions
from localrank.collections.ingest import IngestSettings
from localrank.collections.models import (
    CrossEncoderGetter,
    CrossEncoderModel,
    EmbeddingModel,
    EmbeddingModelFactory,
    EmbeddingModelGetter,
)
from localrank.collections.search import SearchRequest
from localrank.collections.service import CollectionService
from localrank.collections.watch import WatchSettings

__all__ = [
    "EmbeddingModel",
    "CrossEncoderModel",
    "CollectionService",
    "DocumentIn",
    "EmbeddingModelFactory",
    "EmbeddingModelGetter",
    "CrossEncoderGetter",
    "FolderOptions",
    "IngestSettings",
    "SearchRequest",
    "WatchSettings",
]
