"""Benchmark tools: compare mesowriter against peer writers and the raw disk."""
