import pytest

from leapdec.models.testing import save_hf_tiny


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """Factory: (model_type, **overrides) -> (checkpoint dir, transformers model), built once."""
    made = {}

    def make(model_type="llama", **overrides):
        key = (model_type, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in made:
            path = tmp_path_factory.mktemp(f"hf_{model_type}")
            made[key] = (path, save_hf_tiny(path, model_type, **overrides))
        return made[key]

    return make
