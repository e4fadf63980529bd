shared::main!(webauthn_verify_complete);
