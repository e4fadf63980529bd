shared::main!(webauthn_verify_begin);
