"""The pydantic schemas that the schema tests give hivemind's SchemaValidator; the Rust tests
declare the same fields with kwaai_core::dht::schema (kwaai-core/tests/dht_schema_python.rs)."""
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, StrictFloat, StrictInt, StrictStr, confloat, conint

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator


class Progress(BaseModel):
    epoch: conint(ge=0, strict=True)
    loss: Optional[StrictFloat]
    peer: bytes


class ExperimentSchema(BaseModel):
    experiment_name: str
    count: int
    ratio: float
    enabled: bool
    n_batches: Dict[bytes, conint(ge=0, strict=True)]
    signed_data: Dict[BytesWithPublicKey, bytes]
    progress: Dict[BytesWithPublicKey, Optional[Progress]]
    shape: Tuple[StrictInt, ...]
    pair: Tuple[str, float]
    tags: List[StrictStr]
    anything: Any


class ServingSchema(BaseModel):
    blocks: Dict[str, Tuple[conint(ge=0, le=1000, strict=True), confloat(ge=0.0)]]
    version: StrictInt
    count: str


def strict_validators():
    """RSA signatures and the experiment schema, no other keys."""
    return [RSASignatureValidator(), SchemaValidator(ExperimentSchema, allow_extra_keys=False)]


def merged_validators():
    """RSA signatures and both schemas (the serving one under the prefix "model"), merged."""
    return [
        RSASignatureValidator(),
        SchemaValidator(ExperimentSchema, allow_extra_keys=False),
        SchemaValidator(ServingSchema, allow_extra_keys=False, prefix="model"),
    ]
