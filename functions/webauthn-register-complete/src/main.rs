shared::main!(webauthn_register_complete);
