"""schemathesis hooks for `scripts/dev test` (loaded through scripts/schemathesis.toml).

Among its negative cases schemathesis sends JSON bodies of random bytes. `cargo lambda
watch`, which stands in for API Gateway locally, cannot carry a body that is not UTF-8 under
a text media type: it answers 500 itself (`failed to deserialize the request body`) before
any function runs. So such a body is sent as its UTF-8 reading (invalid bytes become
U+FFFD): still not JSON, so the functions' `parse_error` path is fuzzed all the same. The
functions' own handling of non-UTF-8 bodies is tested in process (tests/tests/openapi.rs).
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            case.body = bytes(body).decode("utf-8", errors="replace").encode("utf-8")
