"""The door: what a user brings to a session (their model named as they name it, a multimodal wrapper, their
reference's ``src/`` or a fork of it, run in a process of its own, its values cached, their project's own ``fv``
package) is accepted, or refused in one line before any stage runs."""
