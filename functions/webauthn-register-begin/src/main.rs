shared::main!(webauthn_register_begin);
