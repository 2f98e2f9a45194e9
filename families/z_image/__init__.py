"""Z-Image (Tongyi-MAI/Z-Image-Turbo): not yet in families/FOLDERS; its tiny checkpoint comes first."""
