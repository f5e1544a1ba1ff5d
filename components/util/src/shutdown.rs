//! Graceful shutdown: one signal that every long-running task can wait on.

use tokio::sync::watch;

/// Fires once; cheap to clone; every clone sees the same signal.
#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }
}

impl Shutdown {
    /// Asks everything watching this signal to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until shutdown is asked for.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Triggers this signal on SIGTERM or SIGINT. A second signal exits at once (status
    /// 130): an operator who asks twice does not want to wait for a graceful stop.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
            for n in 0.. {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if n > 0 {
                    eprintln!("second signal: exiting without finishing the graceful stop");
                    std::process::exit(130);
                }
                this.trigger();
            }
        });
    }
}
