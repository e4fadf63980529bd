shared::main!(two_factor_passkey_begin);
