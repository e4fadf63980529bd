shared::main!(security_events);
