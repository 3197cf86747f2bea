"""The KMS emulator the tests run: moto's server (PyPI `moto[server]`), speaking the real KMS
API, with one gap closed. moto (5.2.1 to 5.2.5 at least) lets `Decrypt`, `Encrypt` and
`GenerateDataKey` use a key that `DisableKey` disabled; real KMS refuses them with
`DisabledException` ("The request was rejected because the specified KMS key is not enabled",
AWS KMS API reference). The tests of tenants with their own KMS key need that refusal, so this
wrapper adds it and changes nothing else. Every request is logged on stderr, one line each
(werkzeug's access log): the tests count KMS requests from it.

Usage: python3 tests/kms/emulator.py -H 127.0.0.1 -p PORT
"""

from moto.core.exceptions import JsonRESTError
from moto.kms import models
from moto.server import main


class DisabledException(JsonRESTError):
    code = 400

    def __init__(self, key_id):
        super().__init__("DisabledException", f"{key_id} is disabled.")


def _check(backend, key_id):
    key = backend.keys.get(backend.any_id_to_key_id(key_id))
    if key is not None and key.key_state != "Enabled":
        raise DisabledException(key.arn)


_decrypt = models.KmsBackend.decrypt
_encrypt = models.KmsBackend.encrypt
_generate = models.KmsBackend.generate_data_key


def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
    plaintext, arn = _decrypt(self, ciphertext_blob, encryption_context, key_id)
    _check(self, arn)
    return plaintext, arn


def encrypt(self, key_id, plaintext, encryption_context):
    _check(self, key_id)
    return _encrypt(self, key_id, plaintext, encryption_context)


def generate_data_key(self, key_id, *args, **kwargs):
    _check(self, key_id)
    return _generate(self, key_id, *args, **kwargs)


models.KmsBackend.decrypt = decrypt
models.KmsBackend.encrypt = encrypt
models.KmsBackend.generate_data_key = generate_data_key

if __name__ == "__main__":
    main()
