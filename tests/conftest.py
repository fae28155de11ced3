import pytest
import torch

from model.config import get_preset
from model.tokenizer import Tokenizer
from workers.data.sources import python_docs_corpus


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(python_docs_corpus(), vocab_size=512)


@pytest.fixture
def tiny_cfg():
    return get_preset("tiny")
