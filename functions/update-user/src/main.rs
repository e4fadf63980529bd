shared::main!(update_user);
