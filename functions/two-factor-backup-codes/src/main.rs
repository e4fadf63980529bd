shared::main!(two_factor_backup_codes);
