shared::main!(webauthn_credential_delete);
